"""``ClerkEmulator``: Clerk's Backend and Frontend APIs for Agent Tasks, on loopback."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Sequence
from functools import partial
from types import TracebackType

from ._app import (
    SIGNED_IN_PATH,
    BackendAPI,
    FrontendAPI,
    Request,
    Response,
    TicketConsumption,
    error_response,
    json_response,
)
from ._errors import ApiError, envelope, status_error
from ._faults import Fault, RateLimiter
from ._ids import new_id, new_secret_key
from ._server import LoopbackServer
from ._sessions import DEFAULT_SESSION_TOKEN_LIFETIME, SessionManager
from ._signing import RS256Signer
from ._state import (
    API,
    EmulatedSession,
    EmulatedTask,
    EmulatedUser,
    InstanceState,
    RecordedRequest,
)

__all__ = ["ClerkEmulator"]

_SECRET_KEY = re.compile(r"sk_(test|live)_[A-Za-z0-9_-]+")
_STOP_TIMEOUT = 5.0
DEFAULT_EMAIL_ADDRESS = "agent@example.com"


class ClerkEmulator:
    """Clerk's Agent Task endpoints on two loopback listeners, for tests.

    The Backend API listens on :attr:`api_url`, the Frontend API (where task
    URLs point) on :attr:`frontend_api_url`. Use it as a context manager, or
    call :meth:`start` and :meth:`stop`. The state can be inspected
    (:attr:`tasks`, :attr:`sessions`, :attr:`requests`), faults injected
    (:meth:`inject_fault`) and Clerk's rate limit enforced (``rate_limit=True``).

    Consuming a task's ticket opens a session for the task's user, acted by the
    agent, and redirects with the development handshake. Session tokens are
    RS256 JWTs signed with a per-instance RSA key (:attr:`jwt_key`, and the
    Backend API's ``GET /v1/jwks``), valid ``session_token_lifetime`` seconds.
    Signing needs the optional extra ``pytest-agenttask[emulator]``
    (cryptography and PyJWT); :meth:`start` raises ``ImportError`` without it.

    Errors raised by the emulator's own handlers are answered with a 500 and
    kept; :meth:`check_errors` re-raises them in the test.

    A network model makes loopback cost what the real service does, so that
    round trips can be counted by the clock: every request of either API waits
    :attr:`latency` seconds before it is answered (one round trip: half before
    it is handled, half after), and the first request of each new TCP
    connection waits :attr:`connect_cost` seconds more (TCP and TLS set-up).
    Both default to 0 and are settable while running;
    :attr:`connections_opened` and the request log's timings
    (:class:`RecordedRequest`) show what was paid.
    """

    def __init__(
        self,
        *,
        secret_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        frontend_port: int = 0,
        rate_limit: bool = False,
        rate_limit_requests: int = 100,
        rate_limit_window: float = 10.0,
        domains: Sequence[str] = (),
        session_token_lifetime: float = DEFAULT_SESSION_TOKEN_LIFETIME,
        latency: float = 0.0,
        connect_cost: float = 0.0,
    ) -> None:
        if secret_key is None:
            secret_key = new_secret_key()
        elif not _SECRET_KEY.fullmatch(secret_key):
            # The message must not echo the value: it may be a real key.
            raise ValueError("secret_key must look like sk_test_<base62> or sk_live_<base62>")
        if isinstance(domains, str):
            raise TypeError("domains must be a sequence of host names, not a string")
        self._secret_key = secret_key
        self._session_token_lifetime = _lifetime(session_token_lifetime)
        self._latency = _network_seconds("latency", latency)
        self._connect_cost = _network_seconds("connect_cost", connect_cost)
        self._connections: dict[API, int] = {"backend": 0, "frontend": 0}
        self._in_flight = 0
        self._host = host
        self._ports = (port, frontend_port)
        self._domains = tuple(_normalize_domain(domain) for domain in domains)
        self._state = InstanceState()
        self._limiter = RateLimiter(rate_limit_requests, rate_limit_window)
        self._rate_limit = rate_limit
        self._faults: list[Fault] = []
        self._errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()
        self._servers: tuple[LoopbackServer, LoopbackServer] | None = None
        self._threads: tuple[threading.Thread, ...] = ()
        self._frontend_base = ""  # kept after stop() for requests still in flight
        self._signer = RS256Signer()
        self._sessions = SessionManager(
            self._state,
            self._signer,
            issuer=lambda: self._frontend_base,
            token_lifetime=lambda: self._session_token_lifetime,
        )
        self._backend = BackendAPI(
            self._state,
            secret_key=secret_key,
            limiter=lambda: self._limiter if self._rate_limit else None,
            task_url=lambda ticket: f"{self._frontend_base}/v1/agents/tasks?ticket={ticket}",
            sessions=self._sessions,
            signer=self._signer,
        )
        self._frontend = FrontendAPI(
            self._state, domains=self._domains, on_consumed=self._on_ticket_consumed
        )
        self._default_user_id = self.add_user(email_address=DEFAULT_EMAIL_ADDRESS)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Open both listeners (no-op when already running).

        Raises ``ImportError`` (``pip install 'pytest-agenttask[emulator]'``)
        when cryptography or PyJWT is missing."""
        with self._lifecycle:
            if self._servers is not None:
                return
            self._signer.ensure_available()
            self._stopping.clear()
            port, frontend_port = self._ports
            api = LoopbackServer(
                (self._host, port),
                partial(self._handle, "backend"),
                on_error=self._keep_error,
                on_connect=partial(self._count_connection, "backend"),
            )
            try:
                fapi = LoopbackServer(
                    (self._host, frontend_port),
                    partial(self._handle, "frontend"),
                    on_error=self._keep_error,
                    on_connect=partial(self._count_connection, "frontend"),
                )
            except BaseException:
                api.server_close()
                raise
            threads = tuple(
                threading.Thread(
                    target=server.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"clerk-emulator-{name}",
                    daemon=True,
                )
                for name, server in (("backend", api), ("frontend", fapi))
            )
            for thread in threads:
                thread.start()
            self._servers, self._threads = (api, fapi), threads
            self._frontend_base = self.frontend_api_url

    def stop(self) -> None:
        """Close the listeners and open connections, and join the threads
        (within a few seconds). Calling it again does nothing."""
        with self._lifecycle:
            servers, self._servers = self._servers, None
            threads, self._threads = self._threads, ()
            if servers is None:
                return
            self._stopping.set()  # ends injected delays and network waits early
            for server in servers:
                server.shutdown()
                server.server_close()
                server.close_connections()
            deadline = time.monotonic() + _STOP_TIMEOUT
            for thread in threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            for server in servers:
                server.join_connections(deadline)

    def __enter__(self) -> ClerkEmulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._servers is None:
            return "<ClerkEmulator stopped>"
        return (
            f"<ClerkEmulator api_url={self.api_url!r} frontend_api_url={self.frontend_api_url!r}>"
        )

    # -- addresses and keys ------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the listeners are open."""
        return self._servers is not None

    @property
    def api_url(self) -> str:
        """The Backend API base URL, ``http://127.0.0.1:<port>/v1``."""
        return f"http://{self._url_host()}:{self._listener(0).port}/v1"

    @property
    def frontend_api_url(self) -> str:
        """The Frontend API base URL, ``http://127.0.0.1:<port>`` (no ``/v1``)."""
        return f"http://{self._url_host()}:{self._listener(1).port}"

    @property
    def default_redirect_url(self) -> str:
        """A page the Frontend API listener serves, on ``localhost`` (a different
        cookie host from ``127.0.0.1``), for runs that configured no redirect."""
        return f"http://localhost:{self._listener(1).port}{SIGNED_IN_PATH}"

    @property
    def secret_key(self) -> str:
        """The ``sk_test_`` key the Backend API accepts."""
        return self._secret_key

    @property
    def jwt_key(self) -> str:
        """The PEM public key (SubjectPublicKeyInfo) that verifies the session
        tokens, for ``AuthenticateRequestOptions(jwt_key=...)``. The same key is
        served as a JWK by ``GET /v1/jwks``."""
        return self._signer.public_key_pem

    @property
    def session_token_lifetime(self) -> float:
        """Seconds a session token is valid (default 60, as Clerk's). Settable;
        ``exp`` is a whole second, rounded up."""
        return self._session_token_lifetime

    @session_token_lifetime.setter
    def session_token_lifetime(self, seconds: float) -> None:
        self._session_token_lifetime = _lifetime(seconds)

    @property
    def domains(self) -> tuple[str, ...]:
        """Extra instance domains (loopback hosts are always instance domains)."""
        return self._domains

    @property
    def rate_limit(self) -> bool:
        """Whether Clerk's Backend API rate limit is enforced."""
        return self._rate_limit

    @rate_limit.setter
    def rate_limit(self, enabled: bool) -> None:
        self._rate_limit = enabled
        if not enabled:
            self._limiter.reset()

    # -- network model -----------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds added to every request of either API before it is answered:
        one round trip to the real service (half before the request is handled,
        half after). Default 0; settable while running."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._latency = _network_seconds("latency", seconds)

    @property
    def connect_cost(self) -> float:
        """Seconds added once per new TCP connection, to its first request
        (connection and TLS set-up against the real service). Default 0;
        settable while running."""
        return self._connect_cost

    @connect_cost.setter
    def connect_cost(self, seconds: float) -> None:
        self._connect_cost = _network_seconds("connect_cost", seconds)

    @property
    def connections_opened(self) -> int:
        """TCP connections accepted by both APIs since the start or :meth:`reset`."""
        return self.connection_count()

    def connection_count(self, api: API | None = None) -> int:
        """TCP connections accepted since the start or :meth:`reset`, by one API or both."""
        with self._state.lock:
            if api is None:
                return sum(self._connections.values())
            if api not in self._connections:
                raise ValueError(f"api must be 'backend', 'frontend' or None, not {api!r}")
            return self._connections[api]

    @property
    def requests_in_flight(self) -> int:
        """Requests received and not yet answered (e.g. waiting out the latency)."""
        with self._state.lock:
            return self._in_flight

    def _count_connection(self, api: API) -> None:
        with self._state.lock:
            self._connections[api] += 1

    def _listener(self, index: int) -> LoopbackServer:
        servers = self._servers
        if servers is None:
            raise RuntimeError("the Clerk emulator is not running; call start() first")
        return servers[index]

    def _url_host(self) -> str:
        if self._host in ("", "0.0.0.0"):  # noqa: S104 - only a URL is built here
            return "127.0.0.1"
        if self._host == "::":
            return "[::1]"
        return f"[{self._host}]" if ":" in self._host else self._host

    # -- users -------------------------------------------------------------

    @property
    def default_user_id(self) -> str:
        """A seeded user, with the verified email address ``agent@example.com``."""
        return self._default_user_id

    def add_user(
        self,
        email_address: str | None = None,
        phone_number: str | None = None,
        username: str | None = None,
        *,
        verified: bool = True,
    ) -> str:
        """Create a user and return its id. ``verified=False`` leaves its email
        address and phone number unverified (they then identify nobody)."""
        if email_address is not None and "@" not in email_address:
            raise ValueError(f"not an email address: {email_address!r}")
        if phone_number is not None and not re.fullmatch(r"\+[0-9]{6,15}", phone_number):
            raise ValueError(f"phone_number must be in E.164 form (+15555550100): {phone_number!r}")
        if username is not None and not username.strip():
            raise ValueError("username must not be empty")
        user = EmulatedUser(new_id("user"), email_address, phone_number, username, verified)
        with self._state.lock:
            for other in self._state.users.values():
                for mine, theirs in (
                    (email_address, other.email_address),
                    (phone_number, other.phone_number),
                    (username, other.username),
                ):
                    if mine and theirs and mine.casefold() == theirs.casefold():
                        raise ValueError(f"{mine!r} already belongs to {other.user_id}")
            self._state.users[user.user_id] = user
        return user.user_id

    def delete_user(self, user_id: str) -> None:
        """Delete a user; its tasks stay, and now answer ``agent_task_subject_not_found``;
        its active sessions are revoked."""
        with self._state.lock:
            if self._state.users.pop(user_id, None) is None:
                raise KeyError(user_id)
            self._sessions.revoke_all_of(user_id)

    @property
    def users(self) -> list[EmulatedUser]:
        """The instance's users, oldest first."""
        with self._state.lock:
            return list(self._state.users.values())

    def user(self, user_id: str) -> EmulatedUser:
        """One user (``KeyError`` if there is none with this id)."""
        with self._state.lock:
            return self._state.users[user_id]

    # -- state -------------------------------------------------------------

    @property
    def tasks(self) -> list[EmulatedTask]:
        """Snapshots of every agent task, oldest first."""
        with self._state.lock:
            return list(self._state.tasks.values())

    def task(self, agent_task_id: str) -> EmulatedTask:
        """A snapshot of one task (``KeyError`` if there is none with this id)."""
        with self._state.lock:
            return self._state.tasks[agent_task_id]

    def pending_tasks(self) -> list[EmulatedTask]:
        """The tasks whose ticket is neither consumed nor revoked."""
        return [task for task in self.tasks if task.status == "pending"]

    @property
    def sessions(self) -> list[EmulatedSession]:
        """Snapshots of every session, oldest first (a session past its
        ``expire_at`` shows as ``"expired"``)."""
        return self._state.all_sessions()

    def session(self, session_id: str) -> EmulatedSession:
        """A snapshot of one session (``KeyError`` if there is none with this id)."""
        session = self._state.session(session_id)
        if session is None:
            raise KeyError(session_id)
        return session

    def active_sessions(self) -> list[EmulatedSession]:
        """The sessions neither revoked nor expired, oldest first."""
        return [session for session in self.sessions if session.status == "active"]

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since the start or the last :meth:`reset`."""
        with self._state.lock:
            return list(self._state.requests)

    def request_count(
        self, api: API | None = None, *, method: str | None = None, path: str | None = None
    ) -> int:
        """How many recorded requests match every given criterion (exact path)."""
        return sum(
            1
            for r in self.requests
            if (api is None or r.api == api)
            and (method is None or r.method == method.upper())
            and (path is None or r.path == path)
        )

    def reset(self) -> None:
        """Forget tasks, sessions, requests, connection counts, faults, rate-limit
        counts and handler errors; users, agent ids, the signing key and the
        network model stay."""
        with self._state.lock:
            for api in self._connections:
                self._connections[api] = 0
            self._state.tasks.clear()
            self._state.sessions.clear()
            self._state.requests.clear()
            self._faults.clear()
            self._errors.clear()
        self._limiter.reset()

    # -- faults ------------------------------------------------------------

    def inject_fault(
        self,
        *,
        api: API | None = None,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        code: str | None = None,
        body: str | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        drop: bool = False,
        processed: bool = False,
        times: int = 1,
    ) -> Fault:
        """Make the next ``times`` matching requests fail (``-1``: all of them).

        A request matches when ``api``, ``method`` and ``path`` all match;
        ``path`` matches the request path (no query string) exactly, or as a
        regular expression with :func:`re.fullmatch`. Then, after sleeping
        ``delay`` seconds (at most 60), the emulator answers ``status`` with
        Clerk's error envelope (``code`` overrides the usual code for that
        status, ``body`` replaces the envelope with a ``text/html`` body,
        ``retry_after`` adds a ``Retry-After`` header), or with ``drop=True``
        closes the connection without an answer. With ``processed=True`` the
        request is first handled for real (a task is created, say), and only its
        answer is lost. The first matching fault applies; see :attr:`Fault.fired`.
        """
        fault = Fault(
            api=api,
            method=method,
            path=path,
            status=status,
            code=code,
            body=body,
            retry_after=retry_after,
            delay=delay,
            drop=drop,
            processed=processed,
            times=times,
        )
        with self._state.lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._state.lock:
            self._faults.clear()

    @property
    def faults(self) -> list[Fault]:
        """The injected faults that may still fire."""
        with self._state.lock:
            return list(self._faults)

    def _take_fault(self, api: str, method: str, path: str) -> Fault | None:
        with self._state.lock:
            for fault in self._faults:
                if fault.matches(api, method, path):
                    fault.fire()
                    if fault.exhausted:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- handler errors ----------------------------------------------------

    @property
    def handler_errors(self) -> list[BaseException]:
        """Exceptions raised by the emulator's handlers, not yet re-raised."""
        with self._state.lock:
            return list(self._errors)

    def check_errors(self) -> None:
        """Re-raise the first exception a handler raised (then forget it)."""
        with self._state.lock:
            error = self._errors.pop(0) if self._errors else None
        if error is not None:
            raise error

    def _keep_error(self, error: BaseException) -> None:
        with self._state.lock:
            self._errors.append(error)

    # -- request handling (server threads) ---------------------------------

    def _handle(self, api: API, request: Request) -> Response | None:
        at = time.time()
        with self._state.lock:
            self._in_flight += 1
        try:
            return self._handle_in_flight(api, request, at)
        finally:
            with self._state.lock:
                self._in_flight -= 1

    def _handle_in_flight(self, api: API, request: Request, at: float) -> Response | None:
        # The network model: read once, so a concurrent change applies to whole requests.
        latency, connect_cost = self._latency, self._connect_cost
        before = latency / 2 + (connect_cost if request.new_connection else 0.0)
        after = latency - latency / 2
        fault: Fault | None = None
        response: Response | None
        if before and self._stopping.wait(before):
            response = None  # stopped while the request was "on the wire": not handled
        elif (fault := self._take_fault(api, request.method, request.path)) is None:
            response = self._dispatch(api, request)
        elif fault.delay and self._stopping.wait(fault.delay):
            response = None  # stopped during the delay: the request is not handled
        elif fault.replaces_response and not fault.processed:
            response = _fault_response(fault)
        else:
            response = self._dispatch(api, request)
            if fault.replaces_response:
                response = _fault_response(fault)
        if response is None:
            after = 0.0  # nothing to carry back
        elif after and self._stopping.wait(after):
            response = None  # stopped while the answer was "on the wire"
        note: str | None
        if fault is not None:
            note = fault.description
        else:
            note = response.note if response is not None else None
        record = RecordedRequest(
            api=api,
            method=request.method,
            path=request.path,
            status=response.status if response is not None else None,
            fault=note,
            at=at,
            finished_at=time.time(),
            network_delay=before + after,
            connection=request.connection,
            new_connection=request.new_connection,
        )
        with self._state.lock:
            self._state.requests.append(record)
        return response

    def _dispatch(self, api: API, request: Request) -> Response:
        try:
            if request.framing_error is not None:
                raise request.framing_error
            if api == "backend":
                return self._backend.handle(request)
            return self._frontend.handle(request)
        except ApiError as error:
            return error_response(error)
        except Exception as error:  # kept for check_errors()
            self._keep_error(error)
            return error_response(ApiError(500, [status_error(500)]))

    def _on_ticket_consumed(self, task: EmulatedTask) -> TicketConsumption:
        """What the redirect of a consumed ticket carries: a new session for the
        task's user, handed to the app as the development handshake.

        The handshake JWT's ``handshake`` claim holds the cookies the app's Clerk
        middleware sets on its own host (no ``Domain``): ``__session`` (the
        session token; not HttpOnly, as clerk-js refreshes it), ``__client_uat``
        and ``__clerk_db_jwt``. ``__client`` stays on the Frontend API host.
        """
        session = self._sessions.open_for_task(task)
        now = time.time()
        token = self._sessions.session_token(session, now=now)
        hmac_signer = self._state.signer
        dev_browser = hmac_signer.sign({"id": new_id("dvb")})
        client = hmac_signer.sign({"id": session.client_id})
        handshake = self._sessions.handshake(
            [
                f"__session={token}; Path=/; SameSite=Lax",
                f"__client_uat={int(now)}; Path=/; SameSite=Lax",
                f"__clerk_db_jwt={dev_browser}; Path=/; SameSite=Lax",
            ],
            now=now,
        )
        # Browsers drop `SameSite=None` without `Secure`, and Chromium and Firefox
        # accept `Secure` cookies from http://localhost and 127.0.0.1 (trustworthy
        # origins), so `Secure` is set as Clerk does. Python's cookie jar stores
        # it but sends it only over https; nothing here needs it sent back.
        cookie = f"__client={client}; Path=/; HttpOnly; Secure; SameSite=None"
        return TicketConsumption(
            query={"__clerk_handshake": handshake, "__clerk_db_jwt": dev_browser},
            cookies=(cookie,),
        )


def _fault_response(fault: Fault) -> Response | None:
    if fault.drop or fault.status is None:
        return None
    headers: list[tuple[str, str]] = []
    if fault.retry_after is not None:
        headers.append(("Retry-After", _seconds(fault.retry_after)))
    if fault.body is not None:
        headers.insert(0, ("Content-Type", "text/html; charset=utf-8"))
        return Response(fault.status, headers, fault.body.encode())
    return json_response(fault.status, envelope([status_error(fault.status, fault.code)]), headers)


def _seconds(value: float) -> str:
    # Clerk sends whole seconds; a fractional value is passed on as written so
    # that tests can ask for sub-second waits (clients parse it as a float).
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0")


def _network_seconds(name: str, seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{name} must be a number of seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, not {seconds!r}")
    return float(seconds)


def _lifetime(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError("session_token_lifetime must be a number of seconds")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"session_token_lifetime must be positive, not {seconds!r}")
    return float(seconds)


def _normalize_domain(domain: str) -> str:
    normalized = domain.strip().lower().strip(".")
    if not normalized or "/" in normalized or ":" in normalized:
        raise ValueError(f"domains must be host names like 'example.com', not {domain!r}")
    return normalized
