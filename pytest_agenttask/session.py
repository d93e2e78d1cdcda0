"""Signing in through an Agent Task URL, and keeping the session's token fresh.

Visiting a task URL (:func:`sign_in`, :func:`async_sign_in`) is one ``GET`` to
Clerk's Frontend API, which answers with a redirect to the task's
``redirect_url`` carrying the *handshake*: a JWT whose ``handshake`` claim lists
the ``Set-Cookie`` lines the app's Clerk middleware would send (``__session``,
``__client_uat``, ``__clerk_db_jwt``). The visit resolves it as that middleware
would, without verifying its signature (it came straight from Clerk over the
connection we opened, and verifying would need ``cryptography``), and returns a
:class:`SignIn`: the session and user ids named by the session token, the
cookies, and the URL the browser would land on.

:class:`AgentSession` and :class:`AsyncAgentSession` hold such a sign-in: an
httpx client for the app that sends a fresh session token with every request
(``Authorization: Bearer`` and the ``__session`` cookie), minted through the
Backend API when the current one is about to expire, and :meth:`~AgentSession.close`,
which revokes the session.

:func:`find_task_sessions` and :func:`revoke_session` close what a test opened
by visiting a task URL itself.

Nothing here knows pytest. No token, handshake, ticket or secret key appears in
a repr, an exception message or a log record; importing this module installs a
filter on httpx's and httpcore's loggers that masks them in the URLs and
headers those libraries log.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import http.cookiejar
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timezone
from types import TracebackType
from typing import Any, Literal

import anyio.to_thread
import httpx

from ._redact import install_log_filter, mask_tickets
from .client import BackendClient, _error_from_response, shared_ssl_context
from .errors import AgentTaskError, ClerkAPIError, ClerkTransportError, ConfigurationError
from .models import AgentTask

__all__ = [
    "HANDSHAKE_QUERY_PARAMS",
    "AgentSession",
    "AsyncAgentSession",
    "Cookie",
    "MalformedTokenError",
    "SignIn",
    "SignInError",
    "async_sign_in",
    "decode_jwt_claims",
    "find_task_sessions",
    "parse_set_cookie",
    "revoke_session",
    "sign_in",
    "sign_in_from_redirect",
]

log = logging.getLogger("pytest_agenttask.session")

#: What Clerk's middleware strips from the URL before redirecting to the page.
HANDSHAKE_QUERY_PARAMS = (
    "__clerk_handshake",
    "__clerk_help",
    "__clerk_db_jwt",
    "__clerk_handshake_nonce",
)
_HANDSHAKE = "__clerk_handshake"
_HANDSHAKE_NONCE = "__clerk_handshake_nonce"
_DEV_BROWSER = "__clerk_db_jwt"
_SESSION = "__session"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_DEFAULT_MARGIN = 10.0
_SESSIONS_PAGE = 100
_MAX_PAGES = 20
# Codes and words of a 4xx that means "this session is no longer active".
_CLOSED_CODES = frozenset(
    {
        "session_already_revoked",
        "session_revoked",
        "session_ended",
        "session_expired",
        "session_removed",
        "session_not_active",
        "session_inactive",
    }
)
_CLOSED_WORDS = ("revoked", "ended", "expired", "removed", "not active", "inactive", "abandoned")


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


class SignInError(AgentTaskError):
    """Visiting a task URL did not sign anyone in in a way this module can use
    (no handshake in the answer, a handshake naming no session, ...)."""


class MalformedTokenError(AgentTaskError):
    """A token that should be a JWT is not one. The message never shows the token."""


# --------------------------------------------------------------------------- #
# Redacting httpx's and httpcore's logs
# --------------------------------------------------------------------------- #


install_log_filter()


# --------------------------------------------------------------------------- #
# Tokens and cookies
# --------------------------------------------------------------------------- #


def decode_jwt_claims(token: str, *, what: str = "token") -> dict[str, Any]:
    """The claims of a JWT, decoded **without** verifying its signature.

    Raises :class:`MalformedTokenError` (naming ``what``, never the token) when
    ``token`` is not a compact JWS whose payload is a JSON object.
    """
    if not isinstance(token, str) or not token:
        raise MalformedTokenError(f"the {what} is empty or not a string")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedTokenError(
            f"the {what} is not a JWT: it has {len(parts)} dot-separated part(s), expected 3"
        )
    payload = parts[1].rstrip("=")
    try:
        if not _BASE64URL.fullmatch(payload):
            raise ValueError
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        raise MalformedTokenError(
            f"the {what} is not a JWT: its payload is not base64url"
        ) from None
    try:
        claims = json.loads(raw)
    except (ValueError, RecursionError):
        raise MalformedTokenError(f"the {what} is not a JWT: its payload is not JSON") from None
    if not isinstance(claims, dict):
        raise MalformedTokenError(
            f"the {what} is not a JWT: its payload is JSON but not an object "
            f"({type(claims).__name__})"
        )
    return claims


@dataclass(frozen=True)
class Cookie:
    """One cookie as a ``Set-Cookie`` line described it. ``domain`` is ``None``
    for a host-only cookie; ``expires`` is a unix time, ``None`` for a session
    cookie. The value never shows in the repr."""

    name: str
    value: str = field(repr=False)
    path: str = "/"
    domain: str | None = None
    secure: bool = False
    http_only: bool = False
    same_site: str | None = None
    expires: float | None = None

    def expired(self, now: float | None = None) -> bool:
        """Whether the cookie has expired (a deletion, ``Max-Age=0``, is expired)."""
        if self.expires is None:
            return False
        return self.expires <= (time.time() if now is None else now)

    def to_set_cookie(self) -> str:
        """The cookie as a ``Set-Cookie`` line."""
        parts = [f"{self.name}={self.value}", f"Path={self.path}"]
        if self.domain is not None:
            parts.append(f"Domain={self.domain}")
        if self.expires is not None:
            parts.append(f"Expires={_http_date(self.expires)}")
        if self.secure:
            parts.append("Secure")
        if self.http_only:
            parts.append("HttpOnly")
        if self.same_site is not None:
            parts.append(f"SameSite={self.same_site}")
        return "; ".join(parts)


def _http_date(when: float) -> str:
    return email.utils.formatdate(max(when, 0.0), usegmt=True)


def parse_set_cookie(line: str, *, default_path: str = "/", now: float | None = None) -> Cookie:
    """Parse one ``Set-Cookie`` line (RFC 6265, lenient as browsers are).

    ``Max-Age`` wins over ``Expires``; ``default_path`` applies when there is no
    ``Path`` attribute. Raises :class:`ValueError` (without the value) when the
    line has no ``name=value`` pair.
    """
    pair, *attributes = line.split(";")
    name, sep, value = pair.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise ValueError("a Set-Cookie line without a name=value pair")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    now = time.time() if now is None else now
    path, domain, same_site = default_path, None, None
    secure = http_only = False
    expires: float | None = None
    max_age: float | None = None
    for attribute in attributes:
        key, _, raw = attribute.partition("=")
        key, raw = key.strip().lower(), raw.strip()
        if key == "path" and raw.startswith("/"):
            path = raw
        elif key == "domain" and raw:
            domain = raw.lstrip(".").lower() or None
        elif key == "max-age":
            try:
                seconds = int(raw)
            except ValueError:
                continue
            max_age = now + seconds if seconds > 0 else 0.0
        elif key == "expires":
            parsed = _parse_cookie_date(raw)
            if parsed is not None:
                expires = parsed
        elif key == "secure":
            secure = True
        elif key == "httponly":
            http_only = True
        elif key == "samesite" and raw:
            same_site = raw.capitalize()
    return Cookie(
        name=name,
        value=value,
        path=path,
        domain=domain,
        secure=secure,
        http_only=http_only,
        same_site=same_site,
        expires=max_age if max_age is not None else expires,
    )


def _parse_cookie_date(raw: str) -> float | None:
    """An ``Expires`` date (RFC 1123, or the dashed Netscape form) as a unix time."""
    for candidate in (raw, raw.replace("-", " ")):
        try:
            when = email.utils.parsedate_to_datetime(candidate)
        except (TypeError, ValueError, IndexError):
            continue
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return when.timestamp()
    return None


def _default_path(url: str) -> str:
    """RFC 6265 5.1.4: the directory of the request path."""
    path = urllib.parse.urlsplit(url).path
    if not path.startswith("/") or path.count("/") == 1:
        return "/"
    return path[: path.rindex("/")]


def _is_session_cookie(name: str) -> bool:
    return name == _SESSION or name.startswith(_SESSION + "_")


# --------------------------------------------------------------------------- #
# Visiting a task URL
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class SignIn:
    """What visiting a task URL produced, as the app's Clerk middleware sees it.

    ``cookies`` are the handshake's cookies, for the app's origin;
    ``fapi_cookies`` are those the Frontend API set on its own host
    (``__client``). ``landing_url`` is ``redirect_url`` with the handshake
    parameters removed and the app's own parameters kept; ``app_origin`` is its
    ``scheme://host[:port]``. ``actor`` is the session token's ``act`` claim
    (``{"type": "agent", "sub": agent_id, "task_id": agent_task_id}``).
    """

    session_id: str
    user_id: str
    session_token: str = field(repr=False)
    token_expires_at: float
    cookies: tuple[Cookie, ...]
    landing_url: str
    app_origin: str
    actor: Mapping[str, Any] | None
    fapi_cookies: tuple[Cookie, ...] = ()
    fapi_origin: str = ""

    @property
    def agent_task_id(self) -> str | None:
        """The ``task_id`` of the actor, when the token names one."""
        task_id = (self.actor or {}).get("task_id")
        return task_id if isinstance(task_id, str) else None


def _task_url(task: AgentTask | str) -> str:
    if isinstance(task, AgentTask):
        if task.url is None:
            raise ConfigurationError(
                f"agent task {task.agent_task_id} has no url: Clerk returns it only when the "
                "task is created, so only a task made in this run can be visited"
            )
        return str.__str__(task.url)
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"expected an AgentTask or its url, got {type(task).__name__}")
    return str.__str__(task)


def _build_visit(http: httpx.Client | httpx.AsyncClient, url: str) -> httpx.Request:
    """The GET of a fresh browser: no cookie from ``http``'s jar, JSON errors preferred."""
    try:
        request = http.build_request("GET", url, headers={"Accept": "application/json"})
    except httpx.InvalidURL as exc:
        raise ConfigurationError(
            f"the task url {mask_tickets(url)!r} is not a valid URL ({mask_tickets(str(exc))})"
        ) from None
    # The visit is a first navigation: cookies another visit left (another
    # session's __client) must not turn this sign-in into a second session of
    # that client.
    request.headers.pop("Cookie", None)
    return request


_JAR_LOCK = threading.Lock()


def _snapshot(jar: httpx.Cookies) -> list[http.cookiejar.Cookie]:
    """The jar's cookies. Other threads' requests may store cookies meanwhile
    (under the jar's own lock, which iterating does not take): retry then."""
    for _ in range(10):
        try:
            return list(jar.jar)
        except RuntimeError:  # dictionary changed size during iteration
            continue
    return list(jar.jar)


def _forget_visit_cookies(jar: httpx.Cookies, response: httpx.Response) -> None:
    """Remove from ``jar`` what ``response`` put there (``__client`` on the FAPI host).

    A cookie is removed only while it still holds the value this response set,
    so concurrent visits through one client each remove their own; the last
    writer always finds its value, and the jar ends empty of visit cookies.
    """
    if not response.headers.get_list("set-cookie"):
        return
    mine = httpx.Cookies()
    mine.extract_cookies(response)
    wanted = {(c.domain, c.path, c.name, c.value) for c in mine.jar}
    if not wanted:
        return
    with _JAR_LOCK:
        for cookie in _snapshot(jar):
            if (cookie.domain, cookie.path, cookie.name, cookie.value) in wanted:
                with contextlib.suppress(KeyError):  # removed meanwhile
                    jar.jar.clear(cookie.domain, cookie.path, cookie.name)


def _transport_error(url: str, exc: httpx.RequestError) -> ClerkTransportError:
    kind = type(exc).__name__
    detail = mask_tickets(" ".join(str(exc).split())) or "no detail"
    retryable = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    return ClerkTransportError(
        f"GET {mask_tickets(url)}: visiting the task url failed ({kind}: {detail})",
        retryable=retryable,
    )


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme.lower()}://{host}{port}"


def _split_location(location: str) -> tuple[str, dict[str, str]]:
    """The landing URL (handshake parameters removed, the rest kept as written)
    and the removed parameters' values."""
    parts = urllib.parse.urlsplit(location)
    kept: list[str] = []
    removed: dict[str, str] = {}
    for segment in parts.query.split("&"):
        if not segment:
            continue
        raw_name, _, raw_value = segment.partition("=")
        name = urllib.parse.unquote_plus(raw_name)
        if name in HANDSHAKE_QUERY_PARAMS:
            removed.setdefault(name, urllib.parse.unquote_plus(raw_value))
        else:
            kept.append(segment)
    return urllib.parse.urlunsplit(parts._replace(query="&".join(kept))), removed


def _parse_lines(lines: Sequence[str], default_path: str, now: float) -> list[Cookie]:
    cookies: list[Cookie] = []
    for line in lines:
        try:
            cookies.append(parse_set_cookie(line, default_path=default_path, now=now))
        except ValueError:
            log.debug("skipped a Set-Cookie line without name=value")
    return cookies


def _cookie_value(cookies: Sequence[Cookie], name: str) -> str | None:
    return next((c.value for c in cookies if c.name == name and c.value), None)


def _find_handshake(
    where: str, status: int, target: str, removed: Mapping[str, str], fapi: Sequence[Cookie]
) -> str:
    """The handshake JWT: in the query (development) or a cookie (production)."""
    handshake = removed.get(_HANDSHAKE) or _cookie_value(fapi, _HANDSHAKE)
    if handshake:
        return handshake
    nonce = removed.get(_HANDSHAKE_NONCE) or _cookie_value(fapi, _HANDSHAKE_NONCE)
    detail = (
        f"it carries a nonce ({_HANDSHAKE_NONCE}), which only the app's backend can "
        "exchange for the handshake; resolving that is not supported"
        if nonce
        else "a development instance sends the handshake in the redirect's query and a "
        "production instance as a cookie for the app's domain; this answer has neither"
    )
    raise SignInError(
        f"{where} redirected ({status}) to {mask_tickets(target)} without {_HANDSHAKE}: {detail}"
    )


def _handshake_cookies(
    where: str, handshake: str, landing_url: str, removed: Mapping[str, str], now: float
) -> list[Cookie]:
    """The cookies the app's middleware sets from the handshake."""
    try:
        lines = decode_jwt_claims(handshake, what="handshake").get("handshake")
    except MalformedTokenError as exc:
        raise SignInError(f"{where}: the redirect's handshake is unusable: {exc}") from None
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise SignInError(
            f"{where}: the handshake has no 'handshake' claim listing Set-Cookie lines"
        )
    cookies = _parse_lines(lines, _default_path(landing_url), now)
    if _DEV_BROWSER in removed and not any(c.name.startswith(_DEV_BROWSER) for c in cookies):
        # Development: the middleware moves the dev-browser token from the
        # query into a cookie before redirecting to the clean URL.
        cookies.append(Cookie(_DEV_BROWSER, removed[_DEV_BROWSER], same_site="Lax"))
    return cookies


def _session_claims(
    where: str, cookies: Sequence[Cookie], now: float
) -> tuple[str, dict[str, Any]]:
    """The session token (``__session``, else a suffixed ``__session_*``) and its claims."""
    live = [c for c in cookies if _is_session_cookie(c.name) and c.value and not c.expired(now)]
    live.sort(key=lambda c: c.name != _SESSION)
    if not live:
        raise SignInError(
            f"{where}: the handshake sets no {_SESSION} cookie, so nobody is signed in "
            f"(cookies it sets: {', '.join(c.name for c in cookies) or 'none'})"
        )
    token = live[0].value
    try:
        claims = decode_jwt_claims(token, what="session token")
    except MalformedTokenError as exc:
        raise SignInError(f"{where}: {exc}") from None
    if not isinstance(claims.get("sid"), str) or not isinstance(claims.get("sub"), str):
        raise SignInError(f"{where}: the session token has no string 'sid' and 'sub' claims")
    expires_at = claims.get("exp")
    if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
        raise SignInError(f"{where}: the session token has no numeric 'exp' claim")
    return token, claims


def _resolve_visit(
    response: httpx.Response, url: str, now: float, *, visited: str | None = None
) -> SignIn:
    """Turn the Frontend API's answer into a :class:`SignIn`, as Clerk's middleware would.

    ``visited`` is the URL the answer came from (default: the response's request's).
    """
    where = f"GET {mask_tickets(url)}"
    status = response.status_code
    if status >= 400:
        raise _error_from_response(response, "GET", mask_tickets(url))
    location = response.headers.get("location")
    if not 300 <= status < 400 or not location:
        kind = response.headers.get("content-type") or "no content-type"
        raise SignInError(
            f"{where} answered {status} ({kind}) instead of redirecting to the task's "
            "redirect_url with the sign-in handshake; expected a 307 whose Location carries "
            f"{_HANDSHAKE}"
        )
    if visited is None:
        visited = str(response.request.url)
    fapi_cookies = _parse_lines(
        response.headers.get_list("set-cookie"), _default_path(visited), now
    )
    target = urllib.parse.urljoin(visited, location)
    if not urllib.parse.urlsplit(target).hostname:
        raise SignInError(
            f"{where} redirected ({status}) to a relative URL, {mask_tickets(location)[:60]!r}"
        )
    landing_url, removed = _split_location(target)
    handshake = _find_handshake(where, status, target, removed, fapi_cookies)
    cookies = _handshake_cookies(where, handshake, landing_url, removed, now)
    token, claims = _session_claims(where, cookies, now)
    actor = claims.get("act")
    signed_in = SignIn(
        session_id=claims["sid"],
        user_id=claims["sub"],
        session_token=token,
        token_expires_at=float(claims["exp"]),
        cookies=tuple(cookies),
        landing_url=landing_url,
        app_origin=_origin(landing_url),
        actor=dict(actor) if isinstance(actor, Mapping) else None,
        fapi_cookies=tuple(c for c in fapi_cookies if not c.name.startswith(_HANDSHAKE)),
        fapi_origin=_origin(visited) if visited else "",
    )
    log.debug(
        "signed in through %s: session %s of user %s, landing on %s",
        mask_tickets(url),
        signed_in.session_id,
        signed_in.user_id,
        mask_tickets(landing_url),
    )
    return signed_in


def sign_in_from_redirect(
    status: int,
    headers: Mapping[str, str] | Sequence[tuple[str, str]],
    body: str | bytes = b"",
    *,
    url: str | None = None,
) -> SignIn:
    """Resolve a Frontend API answer to a task URL that was fetched elsewhere
    (by a browser's request interception, say), as :func:`sign_in` does.

    ``headers`` is a list of ``(name, value)`` pairs, or a mapping in which
    several ``Set-Cookie`` values are joined by newlines (Playwright's
    ``APIResponse.headers``). ``url``, the task URL visited, resolves a relative
    ``Location`` and names the Frontend API's origin (``SignIn.fapi_origin``);
    it only ever appears masked.
    """
    pairs: list[tuple[str, str]] = []
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if name.lower() == "set-cookie":
            pairs.extend((name, line) for line in value.split("\n") if line.strip())
        else:
            pairs.append((name, value))
    visited = url or ""
    request = httpx.Request("GET", url or "http://frontend-api.invalid/v1/agents/tasks")
    response = httpx.Response(status, headers=pairs, content=body, request=request)
    return _resolve_visit(response, url or "<task url>", time.time(), visited=visited)


def sign_in(task: AgentTask | str, *, http: httpx.Client) -> SignIn:
    """Visit a task URL (one ``GET``, redirects not followed) and resolve the handshake.

    ``http`` may be shared by many sign-ins (one pooled connection to the
    Frontend API): the visit sends none of its cookies, and the cookies the
    Frontend API sets are removed from its jar again. The session and user ids
    come from the session token itself (no Backend API call).

    Raises :class:`ClerkAPIError` for the Frontend API's errors (a reused ticket
    is ``agent_task_already_used``), :class:`ClerkTransportError` when there is
    no usable answer, and :class:`SignInError` when the answer carries no usable
    handshake.
    """
    url = _task_url(task)
    request = _build_visit(http, url)
    try:
        response = http.send(request, follow_redirects=False, stream=True)
    except httpx.RequestError as exc:
        raise _transport_error(url, exc) from None
    try:
        _forget_visit_cookies(http.cookies, response)
        try:
            response.read()
        except httpx.RequestError as exc:
            raise _transport_error(url, exc) from None
    finally:
        response.close()
    return _resolve_visit(response, url, time.time())


async def async_sign_in(task: AgentTask | str, *, http: httpx.AsyncClient) -> SignIn:
    """:func:`sign_in` over an :class:`httpx.AsyncClient`."""
    url = _task_url(task)
    request = _build_visit(http, url)
    try:
        response = await http.send(request, follow_redirects=False, stream=True)
    except httpx.RequestError as exc:
        raise _transport_error(url, exc) from None
    try:
        _forget_visit_cookies(http.cookies, response)
        try:
            await response.aread()
        except httpx.RequestError as exc:
            raise _transport_error(url, exc) from None
    finally:
        await response.aclose()
    return _resolve_visit(response, url, time.time())


# --------------------------------------------------------------------------- #
# Backend API: sessions
# --------------------------------------------------------------------------- #


def _session_path(session_id: str, action: str) -> str:
    if not isinstance(session_id, str) or not session_id or "/" in session_id:
        raise ConfigurationError(f"session_id must be a non-empty id without '/': {session_id!r}")
    return f"/sessions/{urllib.parse.quote(session_id, safe='')}/{action}"


def _means_closed(error: ClerkAPIError) -> bool:
    """Whether a 4xx answer to a revoke says the session is no longer active.

    Clerk answers 400 ``invalid_action_for_session`` ("Unable to revoke session
    ...", ``meta.session_status``) for a session that is not active, and 404
    for one it no longer knows (inactive sessions are cleaned up).
    """
    if error.status == 404:
        return error.code in ("resource_not_found", "session_not_found")
    if not 400 <= error.status < 500 or error.status in (401, 403, 408, 429):
        return False
    if error.code == "invalid_action_for_session":
        metas = [entry.get("meta") for entry in error.errors]
        statuses = [meta.get("session_status") for meta in metas if isinstance(meta, Mapping)]
        return not any(status in ("active", "pending") for status in statuses)
    if error.code in _CLOSED_CODES:
        return True
    text = f"{error.code} {error.message} {error.long_message}".lower().replace("_", " ")
    return any(word in text for word in _CLOSED_WORDS)


def revoke_session(backend: BackendClient, session_id: str) -> Literal["revoked", "already_closed"]:
    """``POST /sessions/{id}/revoke``: ``"revoked"``, or ``"already_closed"`` when
    Clerk answers a 4xx saying the session was already revoked, ended, expired
    or removed. Any other failure raises."""
    try:
        backend.request("POST", _session_path(session_id, "revoke"), idempotent=True)
    except ClerkAPIError as exc:
        if _means_closed(exc):
            log.debug("session %s was already closed (%s)", session_id, exc.code)
            return "already_closed"
        raise
    log.debug("revoked session %s", session_id)
    return "revoked"


def _items(data: Any, where: str) -> list[Mapping[str, Any]]:
    if isinstance(data, Mapping) and isinstance(data.get("data"), list):
        data = data["data"]  # paginated=true
    if not isinstance(data, list):
        raise ClerkTransportError(
            f"{where}: Clerk answered JSON that is not a list", retryable=False
        )
    return [item for item in data if isinstance(item, Mapping)]


def _identifier_filter(identifier: str) -> str:
    if "@" in identifier:
        return "email_address"
    if identifier.startswith("+"):
        return "phone_number"
    return "username"


def _find_user_id(backend: BackendClient, identifier: str) -> str | None:
    """The id of the user with this identifier (``GET /users``), or ``None``."""
    identifier = identifier.strip()
    if not identifier:
        raise ConfigurationError("identifier must not be empty")
    name = _identifier_filter(identifier)
    data = backend.request("GET", "/users", params={name: identifier}, idempotent=True)
    for user in _items(data, "GET /users"):
        user_id = user.get("id")
        if isinstance(user_id, str) and user_id:
            return user_id
    return None


def find_task_sessions(
    backend: BackendClient,
    agent_task_id: str,
    *,
    user_id: str | None = None,
    identifier: str | None = None,
) -> list[str]:
    """Ids of the active sessions an Agent Task created (``actor.task_id``).

    The user is ``user_id``, or else looked up from ``identifier`` with
    ``GET /users``, filtering on ``email_address`` when it contains ``@``, on
    ``phone_number`` when it starts with ``+``, and on ``username`` otherwise.
    An identifier that names nobody has no sessions. Sessions are listed with
    ``GET /sessions?user_id=...&status=active``, page by page.
    """
    if user_id is None:
        if identifier is None:
            raise ConfigurationError("find_task_sessions needs a user_id or an identifier")
        user_id = _find_user_id(backend, identifier)
        if user_id is None:
            log.debug("no user has the identifier given for task %s", agent_task_id)
            return []
    found: list[str] = []
    seen: set[str] = set()
    for page in range(_MAX_PAGES):
        params = {
            "user_id": user_id,
            "status": "active",
            "limit": str(_SESSIONS_PAGE),
            "offset": str(page * _SESSIONS_PAGE),
        }
        items = _items(
            backend.request("GET", "/sessions", params=params, idempotent=True), "GET /sessions"
        )
        new = 0
        for item in items:
            session_id = item.get("id")
            if not isinstance(session_id, str) or session_id in seen:
                continue
            seen.add(session_id)
            new += 1
            actor = item.get("actor")
            if isinstance(actor, Mapping) and actor.get("task_id") == agent_task_id:
                found.append(session_id)
        if len(items) < _SESSIONS_PAGE or not new:
            break
    return found


# --------------------------------------------------------------------------- #
# Sessions
# --------------------------------------------------------------------------- #


class _TokenKeeper:
    """The session's current token; mints a new one through the Backend API
    when it expires within the margin. Thread-safe."""

    def __init__(
        self,
        session_id: str,
        token: str,
        backend: BackendClient,
        refresh_margin: float | None,
    ) -> None:
        if refresh_margin is not None and not refresh_margin >= 0:
            raise ConfigurationError(
                f"refresh_margin must be a number of seconds >= 0, got {refresh_margin!r}"
            )
        self._session_id = session_id
        self._backend = backend
        self._margin = refresh_margin
        self._lock = threading.Lock()
        self._closed = False
        self.minted = 0
        self.on_new_token: Callable[[str], None] | None = None
        # (token, refresh at, expires at), replaced as one so that the lock-free
        # reader never pairs a token with another token's times.
        self._state = ("", 0.0, 0.0)
        self._accept(token, "session token")

    @property
    def expires_at(self) -> float:
        return self._state[2]

    def _accept(self, token: str, what: str) -> None:
        claims = decode_jwt_claims(token, what=what)
        session_id = claims.get("sid")
        if session_id is not None and session_id != self._session_id:
            raise ClerkTransportError(
                f"the {what} belongs to session {session_id}, not {self._session_id}",
                retryable=False,
            )
        expires_at = claims.get("exp")
        if isinstance(expires_at, bool) or not isinstance(expires_at, (int, float)):
            raise MalformedTokenError(f"the {what} has no numeric 'exp' claim")
        issued_at = claims.get("iat")
        if isinstance(issued_at, (int, float)) and not isinstance(issued_at, bool):
            lifetime = float(expires_at) - float(issued_at)
        else:
            lifetime = float(expires_at) - time.time()
        margin = self._margin
        if margin is None:
            # A quarter of the lifetime, so that a 1-2 s token in tests still
            # gets used before it is replaced; at most 10 s for Clerk's 60 s.
            margin = min(_DEFAULT_MARGIN, max(lifetime, 0.0) / 4)
        self._state = (token, float(expires_at) - margin, float(expires_at))

    def current(self) -> str | None:
        """The token if it is still fresh, else ``None`` (no I/O, no lock)."""
        self._check_open()
        token, refresh_at, _ = self._state
        return token if time.time() < refresh_at else None

    def token(self) -> str:
        """A fresh token, minting one if needed (blocking)."""
        self._check_open()
        with self._lock:
            self._check_open()
            token, refresh_at, _ = self._state
            if time.time() < refresh_at:
                return token
            data = self._backend.request(
                "POST", _session_path(self._session_id, "tokens"), idempotent=True
            )
            jwt = data.get("jwt") if isinstance(data, Mapping) else None
            if not isinstance(jwt, str) or not jwt:
                raise ClerkTransportError(
                    f"POST /sessions/{self._session_id}/tokens: Clerk answered without a "
                    "string 'jwt'",
                    retryable=False,
                )
            self._accept(jwt, "minted session token")
            self.minted += 1
            log.debug(
                "minted a session token for %s, valid for %.1f s",
                self._session_id,
                self.expires_at - time.time(),
            )
            if self.on_new_token is not None:
                self.on_new_token(jwt)  # under the lock: the jar ends with the newest
        return jwt

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise AgentTaskError(f"the agent session {self._session_id} is closed")


def _authorize(request: httpx.Request, token: str, names: Sequence[str]) -> None:
    """Put ``token`` in ``Authorization`` and in every ``__session*`` cookie of the
    request (httpx merged the jar's cookies into the header before auth ran)."""
    request.headers["Authorization"] = f"Bearer {token}"
    pairs: list[tuple[str, str]] = []
    present: set[str] = set()
    for header in request.headers.get_list("cookie"):
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if not name or not sep:
                continue
            if _is_session_cookie(name):
                present.add(name)
                value = token
            pairs.append((name, value))
    pairs.extend((name, token) for name in names if name not in present)
    request.headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in pairs)


class _SessionAuth(httpx.Auth):
    """Sends the session's fresh token as ``Authorization: Bearer`` and as the
    ``__session`` cookie(s). The repr shows no token."""

    def __init__(self, keeper: _TokenKeeper, cookie_names: Sequence[str]) -> None:
        self._keeper = keeper
        self._names = tuple(cookie_names)

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        _authorize(request, self._keeper.token(), self._names)
        yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = self._keeper.current()
        if token is None:
            # Minting blocks on the sync Backend API client: run it in a worker
            # thread (asyncio or trio alike) so one pooled connection serves all.
            token = await anyio.to_thread.run_sync(self._keeper.token)
        _authorize(request, token, self._names)
        yield request

    def __repr__(self) -> str:
        return "_SessionAuth(token=***)"


def _cookie_dict(cookie: Cookie, host: str, value: str) -> dict[str, Any]:
    """A cookie as Playwright's ``BrowserContext.add_cookies`` takes it."""
    entry: dict[str, Any] = {
        "name": cookie.name,
        "value": value,
        "domain": f".{cookie.domain}" if cookie.domain else host,
        "path": cookie.path,
        "httpOnly": cookie.http_only,
        "secure": cookie.secure,
    }
    if cookie.same_site in ("Lax", "Strict", "None"):
        entry["sameSite"] = cookie.same_site
    if cookie.expires is not None:
        entry["expires"] = cookie.expires
    return entry


_CloseOutcome = Literal["revoked", "already_closed"]


class _SessionBase:
    """What the sync and async sessions share: ids, token keeping, cookies, closing."""

    def __init__(
        self,
        task: AgentTask,
        signed_in: SignIn,
        backend: BackendClient,
        *,
        refresh_margin: float | None,
    ) -> None:
        actor_task = signed_in.agent_task_id
        if actor_task is not None and actor_task != task.agent_task_id:
            raise ConfigurationError(
                f"the sign-in belongs to agent task {actor_task}, not {task.agent_task_id}"
            )
        self.task = task
        self.signed_in = signed_in
        self.session_id = signed_in.session_id
        self.user_id = signed_in.user_id
        self._backend = backend
        self._keeper = _TokenKeeper(
            signed_in.session_id, signed_in.session_token, backend, refresh_margin
        )
        names = [c.name for c in signed_in.cookies if _is_session_cookie(c.name)]
        self._session_cookie_names = tuple(dict.fromkeys(names or [_SESSION]))
        self._auth = _SessionAuth(self._keeper, self._session_cookie_names)
        self._close_lock = threading.Lock()
        self.close_outcome: _CloseOutcome | None = None

    @staticmethod
    def _client_options(signed_in: SignIn, timeout: float) -> dict[str, Any]:
        host = urllib.parse.urlsplit(signed_in.app_origin).hostname
        return {
            "base_url": signed_in.app_origin,
            "timeout": httpx.Timeout(timeout),
            # An app on loopback must never be reached through the environment's proxy.
            "trust_env": host not in _LOOPBACK,
            "verify": shared_ssl_context(),
        }

    def _fill_jar(self, jar: httpx.Cookies) -> None:
        """Store the handshake's cookies as a browser landing on the app would."""
        lines = [c.to_set_cookie() for c in self.signed_in.cookies]
        self._store(jar, lines)
        self._keeper.on_new_token = lambda token: self._store_token(jar, token)

    def _store(self, jar: httpx.Cookies, lines: Sequence[str]) -> None:
        if not lines:
            return
        landing = httpx.Request("GET", self.signed_in.landing_url)
        jar.extract_cookies(
            httpx.Response(200, headers=[("Set-Cookie", line) for line in lines], request=landing)
        )

    def _store_token(self, jar: httpx.Cookies, token: str) -> None:
        lines = []
        for name in self._session_cookie_names:
            template = next(
                (c for c in self.signed_in.cookies if c.name == name),
                Cookie(name, "", same_site="Lax"),
            )
            fresh = Cookie(
                name,
                token,
                path=template.path,
                domain=template.domain,
                secure=template.secure,
                same_site=template.same_site,
            )
            lines.append(fresh.to_set_cookie())
        self._store(jar, lines)

    def _browser_cookies(self, token: str) -> list[dict[str, Any]]:
        now = time.time()
        app_host = urllib.parse.urlsplit(self.signed_in.app_origin).hostname or ""
        fapi_host = urllib.parse.urlsplit(self.signed_in.fapi_origin).hostname or ""
        cookies = [
            _cookie_dict(c, app_host, token if _is_session_cookie(c.name) else c.value)
            for c in self.signed_in.cookies
            if not c.expired(now)
        ]
        if fapi_host:
            cookies.extend(
                _cookie_dict(c, fapi_host, c.value)
                for c in self.signed_in.fapi_cookies
                if not c.expired(now)
            )
        return cookies

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` revoked the session (or found it already closed)."""
        return self.close_outcome is not None

    @property
    def tokens_minted(self) -> int:
        """How many tokens this session minted through the Backend API."""
        return self._keeper.minted

    def _revoke(self) -> _CloseOutcome:
        """Revoke once; a failure leaves the session open, so a later close retries."""
        with self._close_lock:
            if self.close_outcome is not None:
                return self.close_outcome
            self._keeper.close()
            outcome = revoke_session(self._backend, self.session_id)
            self.close_outcome = outcome
            return outcome

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return (
            f"<{type(self).__name__} {self.session_id} {self.user_id} "
            f"task {self.task.agent_task_id}{state}>"
        )


class AgentSession(_SessionBase):
    """A signed-in agent session, with an :class:`httpx.Client` for the app.

    ``client`` has ``base_url`` = the app's origin, holds the handshake's
    cookies for the app's host, and sends a fresh session token with every
    request, as ``Authorization: Bearer <jwt>`` and as the ``__session`` cookie.
    A token is reused until it expires within ``refresh_margin`` seconds
    (default: a quarter of its lifetime, at most 10 s), then a new one is minted
    with ``POST /sessions/{id}/tokens`` (no body: Clerk's usual lifetime, the
    same token a browser would hold). :meth:`close` revokes the session.
    """

    def __init__(
        self,
        task: AgentTask,
        signed_in: SignIn,
        backend: BackendClient,
        *,
        refresh_margin: float | None = None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(task, signed_in, backend, refresh_margin=refresh_margin)
        self.client = httpx.Client(
            auth=self._auth, transport=transport, **self._client_options(signed_in, timeout)
        )
        self._fill_jar(self.client.cookies)

    def token(self) -> str:
        """A session token valid for at least the refresh margin."""
        return self._keeper.token()

    @property
    def cookies(self) -> list[dict[str, Any]]:
        """The cookies a browser holds after the visit, for Playwright's
        ``context.add_cookies``; ``__session`` carries a fresh token."""
        return self._browser_cookies(self.token())

    def close(self) -> _CloseOutcome:
        """Revoke the session (``"revoked"``, or ``"already_closed"``) and close
        :attr:`client`. Calling it again returns the same outcome. If revoking
        fails the error is raised and a later call tries again."""
        try:
            return self._revoke()
        finally:
            self.client.close()

    def __enter__(self) -> AgentSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncAgentSession(_SessionBase):
    """:class:`AgentSession` with an :class:`httpx.AsyncClient`; ``await session.token()``.

    It is made and closed from synchronous code (a sync fixture, under
    pytest-asyncio, anyio's plugin or plain ``asyncio.run`` alike), so its
    client must not need ``await aclose()`` to release sockets: its transport
    keeps no connection alive (``max_keepalive_connections=0``), so every
    connection is closed once its response is, and none outlives the event
    loop that opened it. :meth:`close` revokes the session through the sync
    Backend API client and makes the client refuse further requests;
    :meth:`aclose` does the same and also closes the client. Tokens are minted
    through the same sync client, in a worker thread
    (:func:`anyio.to_thread.run_sync`), so one pooled Backend API connection
    serves the whole run. A ``transport`` you pass is yours to close.
    """

    def __init__(
        self,
        task: AgentTask,
        signed_in: SignIn,
        backend: BackendClient,
        *,
        refresh_margin: float | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(task, signed_in, backend, refresh_margin=refresh_margin)
        if transport is None:
            transport = httpx.AsyncHTTPTransport(
                verify=shared_ssl_context(),
                limits=httpx.Limits(max_keepalive_connections=0),
                trust_env=self._client_options(signed_in, timeout)["trust_env"],
            )
        self.client = httpx.AsyncClient(
            auth=self._auth, transport=transport, **self._client_options(signed_in, timeout)
        )
        self._fill_jar(self.client.cookies)

    async def token(self) -> str:
        """A session token valid for at least the refresh margin."""
        token = self._keeper.current()
        if token is None:
            token = await anyio.to_thread.run_sync(self._keeper.token)
        return token

    @property
    def cookies(self) -> list[dict[str, Any]]:
        """The cookies a browser holds after the visit, for Playwright; a
        property, so it may mint a token synchronously (blocking)."""
        return self._browser_cookies(self._keeper.token())

    def close(self) -> _CloseOutcome:
        """Revoke the session (sync); see the class docstring for the client."""
        return self._revoke()

    async def aclose(self) -> _CloseOutcome:
        """Revoke the session (in a worker thread) and close :attr:`client`."""
        try:
            return await anyio.to_thread.run_sync(self._revoke)
        finally:
            await self.client.aclose()

    def __enter__(self) -> AsyncAgentSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> AsyncAgentSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
