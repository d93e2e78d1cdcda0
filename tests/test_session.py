"""pytest_agenttask.session against the emulator over loopback: visiting a task URL,
the handshake, the app client's token (both ways, refreshed), closing, finding the
sessions of a task, the async twin, errors, and redaction."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import jwt
import pytest

from pytest_agenttask.client import BackendClient
from pytest_agenttask.emulator import ClerkEmulator
from pytest_agenttask.errors import (
    AgentTaskError,
    ClerkAPIError,
    ClerkTransportError,
    ConfigurationError,
)
from pytest_agenttask.models import AgentTask
from pytest_agenttask.session import (
    AgentSession,
    AsyncAgentSession,
    MalformedTokenError,
    SignIn,
    SignInError,
    async_sign_in,
    decode_jwt_claims,
    find_task_sessions,
    parse_set_cookie,
    revoke_session,
    sign_in,
    sign_in_from_redirect,
)

WAIT_LIMIT = 5.0  # seconds any wait in this file may last


# --------------------------------------------------------------------------- #
# A tiny app that records what it receives and verifies the session token
# --------------------------------------------------------------------------- #


@dataclass
class Seen:
    path: str
    cookies: dict[str, str]
    authorization: str | None


@dataclass
class RecordingApp:
    """Stands for the user's app: ``/api/me`` answers who the token says, if valid."""

    jwt_key: str
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def verify(self, token: str) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(token, self.jwt_key, algorithms=["RS256"])
        return claims

    def handler(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                cookies: dict[str, str] = {}
                for part in (self.headers.get("Cookie") or "").split(";"):
                    name, _, value = part.strip().partition("=")
                    if name:
                        cookies[name] = value
                authorization = self.headers.get("Authorization")
                app.seen.append(Seen(self.path, cookies, authorization))
                status, body = 200, {}
                try:
                    bearer = app.verify((authorization or "").removeprefix("Bearer "))
                    cookie = app.verify(cookies.get("__session", ""))
                    body = {"bearer": bearer["sub"], "cookie": cookie["sub"], "sid": bearer["sid"]}
                except jwt.PyJWTError as exc:
                    status, body = 401, {"error": type(exc).__name__}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture
def app(emulator: ClerkEmulator) -> Iterator[RecordingApp]:
    recording = RecordingApp(emulator.jwt_key)
    server = _Server(("127.0.0.1", 0), recording.handler())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    recording.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield recording
    server.shutdown()
    server.server_close()
    thread.join(WAIT_LIMIT)


@pytest.fixture
def backend(emulator: ClerkEmulator) -> Iterator[BackendClient]:
    with BackendClient(emulator.secret_key, api_url=emulator.api_url, retries=0) as client:
        yield client


@pytest.fixture
def fapi() -> Iterator[httpx.Client]:
    """One client for every visit, as the plugin shares one."""
    with httpx.Client(timeout=5) as client:
        yield client


MakeTask = Callable[..., AgentTask]


@pytest.fixture
def make_task(backend: BackendClient, emulator: ClerkEmulator, app: RecordingApp) -> MakeTask:
    def make(user_id: str | None = None, redirect_url: str | None = None) -> AgentTask:
        return backend.create(
            agent_name="pytest-agenttask",
            task_description="test_session",
            redirect_url=redirect_url or f"{app.url}/dashboard?tab=home&x=a%20b",
            user_id=user_id or emulator.default_user_id,
        )

    return make


def token_requests(emulator: ClerkEmulator, session_id: str) -> int:
    return emulator.request_count(
        "backend", method="POST", path=f"/v1/sessions/{session_id}/tokens"
    )


def wait_until(deadline: float) -> None:
    """Sleep until the unix time ``deadline`` (bounded by WAIT_LIMIT)."""
    delay = deadline - time.time()
    assert delay < WAIT_LIMIT
    if delay > 0:
        time.sleep(delay)


def unsigned_jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2ln"


# --------------------------------------------------------------------------- #
# sign_in
# --------------------------------------------------------------------------- #


def test_sign_in_resolves_the_handshake_in_one_request(
    emulator: ClerkEmulator, fapi: httpx.Client, make_task: MakeTask, app: RecordingApp
) -> None:
    task = make_task()
    signed_in = sign_in(task, http=fapi)

    assert emulator.request_count("frontend") == 1
    assert emulator.request_count("backend") == 1  # the create only: no session lookup
    assert signed_in.user_id == emulator.default_user_id
    session = emulator.session(signed_in.session_id)
    assert session.user_id == emulator.default_user_id
    assert session.status == "active"
    assert session.actor == {"type": "agent", "sub": task.agent_id, "task_id": task.agent_task_id}
    assert signed_in.actor == session.actor
    assert signed_in.agent_task_id == task.agent_task_id
    assert signed_in.landing_url == f"{app.url}/dashboard?tab=home&x=a%20b"
    assert signed_in.app_origin == app.url
    assert signed_in.fapi_origin == emulator.frontend_api_url
    claims = app.verify(signed_in.session_token)
    assert signed_in.token_expires_at == claims["exp"]
    assert claims["sid"] == signed_in.session_id
    by_name = {cookie.name: cookie for cookie in signed_in.cookies}
    assert set(by_name) == {"__session", "__client_uat", "__clerk_db_jwt"}
    assert by_name["__session"].value == signed_in.session_token
    assert by_name["__session"].path == "/"
    assert by_name["__session"].same_site == "Lax"
    assert not by_name["__session"].http_only
    assert by_name["__session"].domain is None
    assert [c.name for c in signed_in.fapi_cookies] == ["__client"]
    assert signed_in.fapi_cookies[0].http_only
    assert list(fapi.cookies.jar) == []  # nothing of the visit stays in the shared client


def test_sign_in_accepts_the_url_string(
    emulator: ClerkEmulator, fapi: httpx.Client, make_task: MakeTask
) -> None:
    task = make_task()
    assert task.url is not None
    signed_in = sign_in(str(task.url), http=fapi)
    assert emulator.session(signed_in.session_id).agent_task_id == task.agent_task_id


def test_concurrent_sign_ins_share_one_client_and_leave_its_jar_empty(
    emulator: ClerkEmulator, fapi: httpx.Client, make_task: MakeTask
) -> None:
    fapi.cookies.set("mine", "kept")  # the caller's own cookies stay
    tasks = [make_task() for _ in range(6)]
    results: dict[str, SignIn] = {}
    errors: list[BaseException] = []

    def visit(task: AgentTask) -> None:
        try:
            results[task.agent_task_id] = sign_in(task, http=fapi)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=visit, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_LIMIT)
    assert errors == []
    assert {s.agent_task_id for s in results.values()} == {t.agent_task_id for t in tasks}
    assert len({s.session_id for s in results.values()}) == 6
    assert [c.name for c in fapi.cookies.jar] == ["mine"]


def test_sign_in_from_a_redirect_fetched_elsewhere(
    emulator: ClerkEmulator, make_task: MakeTask, app: RecordingApp
) -> None:
    task = make_task()
    assert task.url is not None
    response = httpx.get(str(task.url))  # what a browser's route.fetch() gets
    signed_in = sign_in_from_redirect(
        response.status_code, response.headers.multi_items(), response.text, url=str(task.url)
    )
    assert emulator.session(signed_in.session_id).agent_task_id == task.agent_task_id
    assert signed_in.landing_url == f"{app.url}/dashboard?tab=home&x=a%20b"
    assert signed_in.fapi_origin == emulator.frontend_api_url
    # Playwright's APIResponse.headers: a dict, Set-Cookie values joined by newlines.
    token = session_jwt()
    handshake = unsigned_jwt({"handshake": [f"__session={token}; Path=/"]})
    headers = {
        "location": f"{APP}&__clerk_handshake={handshake}",
        "set-cookie": "__client=c1; Path=/; HttpOnly\n__client_uat=0; Path=/",
    }
    signed_in = sign_in_from_redirect(307, headers)
    assert signed_in.session_token == token
    assert [c.name for c in signed_in.fapi_cookies] == ["__client", "__client_uat"]
    assert signed_in.fapi_origin == ""
    with pytest.raises(SignInError, match="relative URL") as relative:
        sign_in_from_redirect(307, {"location": "/home?__clerk_handshake=eyJsecret.eyJx.y"})
    assert "secret" not in str(relative.value)
    with pytest.raises(ClerkAPIError) as info:
        sign_in_from_redirect(
            400,
            [("Content-Type", "application/json")],
            json.dumps({"errors": [{"code": "agent_task_revoked", "message": "revoked"}]}),
        )
    assert info.value.code == "agent_task_revoked"


def test_sign_in_without_a_url_is_a_configuration_error(fapi: httpx.Client) -> None:
    with pytest.raises(ConfigurationError, match="has no url"):
        sign_in(AgentTask(agent_id="agt_1", agent_task_id="agttsk_1"), http=fapi)


def test_async_sign_in_under_asyncio(emulator: ClerkEmulator, make_task: MakeTask) -> None:
    task = make_task()

    async def main() -> SignIn:
        async with httpx.AsyncClient() as http:
            signed_in = await async_sign_in(task, http=http)
            assert list(http.cookies.jar) == []
            return signed_in

    signed_in = asyncio.run(main())
    assert emulator.session(signed_in.session_id).user_id == signed_in.user_id


# --------------------------------------------------------------------------- #
# AgentSession
# --------------------------------------------------------------------------- #


def test_client_sends_the_token_as_bearer_and_cookie(
    emulator: ClerkEmulator,
    fapi: httpx.Client,
    backend: BackendClient,
    make_task: MakeTask,
    app: RecordingApp,
) -> None:
    task = make_task()
    with AgentSession(task, sign_in(task, http=fapi), backend) as session:
        response = session.client.get("/api/me")
        assert response.status_code == 200, response.text
        assert response.json() == {
            "bearer": emulator.default_user_id,
            "cookie": emulator.default_user_id,
            "sid": session.session_id,
        }
        [seen] = app.seen
        assert seen.path == "/api/me"
        token = session.signed_in.session_token
        assert seen.authorization == f"Bearer {token}"
        assert seen.cookies["__session"] == token
        # The handshake's other cookies travel too, from the client's jar.
        assert set(seen.cookies) == {"__session", "__client_uat", "__clerk_db_jwt"}
        assert session.token() == token  # fresh: reused, nothing minted
        assert token_requests(emulator, session.session_id) == 0
        assert session.tokens_minted == 0
        assert str(session.client.base_url).rstrip("/") == app.url


def test_a_cookie_passed_per_request_does_not_replace_the_session(
    fapi: httpx.Client, backend: BackendClient, make_task: MakeTask, app: RecordingApp
) -> None:
    task = make_task()
    with AgentSession(task, sign_in(task, http=fapi), backend) as session:
        session.client.cookies.set("__session", "stale", domain="127.0.0.1")
        response = session.client.get("/api/me", headers={"Cookie": "theme=dark"})
        assert response.status_code == 200, response.text
        assert app.seen[-1].cookies["__session"] == session.token()
        assert app.seen[-1].cookies["theme"] == "dark"


def test_token_is_refreshed_after_it_expires(
    emulator: ClerkEmulator,
    fapi: httpx.Client,
    backend: BackendClient,
    make_task: MakeTask,
    app: RecordingApp,
) -> None:
    emulator.session_token_lifetime = 1.5
    task = make_task()
    with AgentSession(task, sign_in(task, http=fapi), backend) as session:
        first = session.signed_in.session_token
        assert session.client.get("/api/me").status_code == 200
        assert token_requests(emulator, session.session_id) == 0

        wait_until(session.signed_in.token_expires_at + 0.05)
        response = session.client.get("/api/me")
        assert response.status_code == 200, response.text
        second = app.seen[-1].cookies["__session"]
        assert second != first
        assert app.seen[-1].authorization == f"Bearer {second}"
        assert app.verify(second)["sid"] == session.session_id
        assert token_requests(emulator, session.session_id) == 1
        # The new token is reused, and the jar holds it.
        assert session.client.get("/api/me").status_code == 200
        assert app.seen[-1].cookies["__session"] == second
        assert session.token() == second
        assert token_requests(emulator, session.session_id) == 1
        assert session.tokens_minted == 1
        assert session.client.cookies.get("__session") == second


def test_concurrent_token_calls_mint_once(
    emulator: ClerkEmulator, fapi: httpx.Client, backend: BackendClient, make_task: MakeTask
) -> None:
    emulator.session_token_lifetime = 0.5
    task = make_task()
    with AgentSession(task, sign_in(task, http=fapi), backend) as session:
        wait_until(session.signed_in.token_expires_at + 0.05)
        tokens: list[str] = []
        threads = [
            threading.Thread(target=lambda: tokens.append(session.token())) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_LIMIT)
        assert len(tokens) == 8
        assert len(set(tokens)) == 1
        assert token_requests(emulator, session.session_id) == 1


def test_refresh_margin_is_configurable(
    emulator: ClerkEmulator, fapi: httpx.Client, backend: BackendClient, make_task: MakeTask
) -> None:
    task = make_task()
    # A margin longer than the token's life: every call mints.
    with AgentSession(task, sign_in(task, http=fapi), backend, refresh_margin=3600) as session:
        first, second = session.token(), session.token()
        assert first != second
        assert token_requests(emulator, session.session_id) == 2


def test_close_revokes_once(
    emulator: ClerkEmulator, fapi: httpx.Client, backend: BackendClient, make_task: MakeTask
) -> None:
    task = make_task()
    session = AgentSession(task, sign_in(task, http=fapi), backend)
    assert not session.closed
    assert session.close() == "revoked"
    assert session.closed
    assert session.close_outcome == "revoked"
    assert emulator.session(session.session_id).status == "revoked"
    assert session.client.is_closed
    assert session.close() == "revoked"  # a no-op
    revokes = emulator.request_count(
        "backend", method="POST", path=f"/v1/sessions/{session.session_id}/revoke"
    )
    assert revokes == 1
    with pytest.raises(AgentTaskError, match="is closed"):
        session.token()
    assert repr(session).endswith(" closed>")


def test_close_of_a_session_revoked_elsewhere_counts_as_closed(
    emulator: ClerkEmulator, fapi: httpx.Client, backend: BackendClient, make_task: MakeTask
) -> None:
    task = make_task()
    session = AgentSession(task, sign_in(task, http=fapi), backend)
    assert revoke_session(backend, session.session_id) == "revoked"
    assert session.close() == "already_closed"
    assert revoke_session(backend, "sess_unknown") == "already_closed"


def test_revoke_session_raises_other_failures(
    emulator: ClerkEmulator, fapi: httpx.Client, backend: BackendClient, make_task: MakeTask
) -> None:
    task = make_task()
    session = AgentSession(task, sign_in(task, http=fapi), backend)
    path = f"/v1/sessions/{session.session_id}/revoke"
    emulator.inject_fault(path=path, status=500)
    with pytest.raises(ClerkAPIError) as info:
        session.close()
    assert info.value.status == 500
    assert not session.closed
    assert emulator.session(session.session_id).status == "active"
    assert session.close() == "revoked"  # a later close tries again


def test_session_of_another_task_is_refused(
    fapi: httpx.Client, backend: BackendClient, make_task: MakeTask
) -> None:
    task, other = make_task(), make_task()
    with pytest.raises(ConfigurationError, match="belongs to agent task"):
        AgentSession(other, sign_in(task, http=fapi), backend)


def test_browser_cookies_for_playwright(
    emulator: ClerkEmulator, fapi: httpx.Client, backend: BackendClient, make_task: MakeTask
) -> None:
    task = make_task()
    with AgentSession(task, sign_in(task, http=fapi), backend) as session:
        cookies = {c["name"]: c for c in session.cookies}
        assert set(cookies) == {"__session", "__client_uat", "__clerk_db_jwt", "__client"}
        assert cookies["__session"] == {
            "name": "__session",
            "value": session.token(),
            "domain": "127.0.0.1",
            "path": "/",
            "httpOnly": False,
            "secure": False,
            "sameSite": "Lax",
        }
        assert cookies["__client"]["httpOnly"] is True
        assert cookies["__client"]["sameSite"] == "None"


# --------------------------------------------------------------------------- #
# find_task_sessions
# --------------------------------------------------------------------------- #


def visit_plainly(task: AgentTask) -> None:
    """What a test does with the URL itself: a plain GET, not following the redirect."""
    assert task.url is not None
    response = httpx.get(str(task.url))
    assert response.status_code == 307


def test_find_task_sessions_by_user_id_and_identifier(
    emulator: ClerkEmulator, backend: BackendClient, make_task: MakeTask
) -> None:
    task, other = make_task(), make_task()
    visit_plainly(task)
    visit_plainly(other)
    [mine] = [s.session_id for s in emulator.sessions if s.agent_task_id == task.agent_task_id]

    user_id = emulator.default_user_id
    assert find_task_sessions(backend, task.agent_task_id, user_id=user_id) == [mine]
    assert find_task_sessions(backend, task.agent_task_id, identifier="agent@example.com") == [mine]
    assert find_task_sessions(backend, "agttsk_none", user_id=user_id) == []
    assert find_task_sessions(backend, task.agent_task_id, identifier="nobody@example.com") == []
    revoke_session(backend, mine)
    assert find_task_sessions(backend, task.agent_task_id, user_id=user_id) == []
    with pytest.raises(ConfigurationError, match="user_id or an identifier"):
        find_task_sessions(backend, task.agent_task_id)


@pytest.mark.parametrize("identifier", ["+15555550123", "ada_agent"])
def test_find_task_sessions_guesses_the_identifier_kind(
    emulator: ClerkEmulator, backend: BackendClient, make_task: MakeTask, identifier: str
) -> None:
    known = [u.user_id for u in emulator.users if identifier in (u.phone_number, u.username)]
    if known:  # the shared emulator keeps its users between tests
        [user_id] = known
    elif identifier.startswith("+"):
        user_id = emulator.add_user(phone_number=identifier)
    else:
        user_id = emulator.add_user(username=identifier)
    task = make_task(user_id=user_id)
    visit_plainly(task)
    [session] = find_task_sessions(backend, task.agent_task_id, identifier=identifier)
    assert emulator.session(session).user_id == user_id
    assert emulator.request_count("backend", method="GET", path="/v1/users") == 1


# --------------------------------------------------------------------------- #
# AsyncAgentSession
# --------------------------------------------------------------------------- #


async def _use_async_session(session: AsyncAgentSession, expires_at: float) -> list[str]:
    first = await session.client.get("/api/me")
    assert first.status_code == 200, first.text
    await anyio.sleep(max(0.0, expires_at + 0.05 - time.time()))
    second = await session.client.get("/api/me")
    assert second.status_code == 200, second.text
    return [await session.token()]


def test_async_session_under_asyncio_run(
    emulator: ClerkEmulator,
    fapi: httpx.Client,
    backend: BackendClient,
    make_task: MakeTask,
    app: RecordingApp,
) -> None:
    emulator.session_token_lifetime = 1.5
    task = make_task()
    signed_in = sign_in(task, http=fapi)
    session = AsyncAgentSession(task, signed_in, backend)  # made in sync code
    assert signed_in.token_expires_at - time.time() < WAIT_LIMIT
    [token] = asyncio.run(_use_async_session(session, signed_in.token_expires_at))
    assert [s.cookies["__session"] for s in app.seen] == [signed_in.session_token, token]
    assert [s.authorization for s in app.seen] == [
        f"Bearer {signed_in.session_token}",
        f"Bearer {token}",
    ]
    assert token_requests(emulator, session.session_id) == 1
    # No connection outlives its event loop: another loop can use the client.
    assert asyncio.run(session.client.get("/api/me")).status_code == 200
    assert session.close() == "revoked"  # from sync code, no event loop
    assert emulator.session(session.session_id).status == "revoked"

    async def after_close() -> None:
        with pytest.raises(AgentTaskError, match="is closed"):
            await session.client.get("/api/me")

    asyncio.run(after_close())


def test_async_session_aclose(
    emulator: ClerkEmulator, fapi: httpx.Client, backend: BackendClient, make_task: MakeTask
) -> None:
    task = make_task()

    async def main() -> None:
        async with AsyncAgentSession(task, sign_in(task, http=fapi), backend) as session:
            assert (await session.client.get("/api/me")).status_code == 200
        assert session.client.is_closed
        assert session.close_outcome == "revoked"
        assert await session.aclose() == "revoked"

    asyncio.run(main())
    assert emulator.active_sessions() == []


def test_async_session_under_trio(
    emulator: ClerkEmulator,
    fapi: httpx.Client,
    backend: BackendClient,
    make_task: MakeTask,
) -> None:
    trio = pytest.importorskip("trio")
    task = make_task()
    signed_in = sign_in(task, http=fapi)
    # A margin longer than a token's life: every use mints, in a worker thread.
    session = AsyncAgentSession(task, signed_in, backend, refresh_margin=3600)
    trio.run(_use_async_session, session, 0.0)
    assert token_requests(emulator, session.session_id) == 3
    assert session.close() == "revoked"


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


def test_reused_ticket(fapi: httpx.Client, make_task: MakeTask) -> None:
    task = make_task()
    sign_in(task, http=fapi)
    with pytest.raises(ClerkAPIError) as info:
        sign_in(task, http=fapi)
    assert info.value.status == 400
    assert info.value.code == "agent_task_already_used"
    assert "ticket=***" in str(info.value)
    assert list(fapi.cookies.jar) == []


def test_revoked_task(fapi: httpx.Client, backend: BackendClient, make_task: MakeTask) -> None:
    task = make_task()
    backend.revoke(task.agent_task_id)
    with pytest.raises(ClerkAPIError) as info:
        sign_in(task, http=fapi)
    assert (info.value.status, info.value.code) == (400, "agent_task_revoked")


def test_html_error_page(emulator: ClerkEmulator, fapi: httpx.Client, make_task: MakeTask) -> None:
    task = make_task()
    assert task.url is not None
    ticket = parse_qs(urlsplit(str(task.url)).query)["ticket"][0]
    emulator.inject_fault(
        api="frontend", status=400, body=f"<html><p>ticket={ticket} is invalid</p></html>"
    )
    with pytest.raises(ClerkTransportError) as info:
        sign_in(task, http=fapi)
    assert "400" in str(info.value)
    assert "is invalid" in str(info.value)
    assert ticket not in str(info.value)


def test_unreachable_frontend_api(fapi: httpx.Client) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1/agents/tasks?ticket=eyJsecret.eyJsecret.sig"
    with pytest.raises(ClerkTransportError, match="visiting the task url failed") as info:
        sign_in(url, http=fapi)
    assert "secret" not in str(info.value)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def fake_fapi(
    status: int = 307,
    location: str | None = None,
    set_cookies: tuple[str, ...] = (),
    body: bytes = b"",
) -> httpx.Client:
    """A Frontend API answering every request the same way (in process)."""

    def handler(request: httpx.Request) -> httpx.Response:
        headers = [("Set-Cookie", line) for line in set_cookies]
        if location is not None:
            headers.append(("Location", location))
        return httpx.Response(status, headers=headers, content=body)

    return httpx.Client(transport=httpx.MockTransport(handler))


TASK_URL = "https://fapi.example.test/v1/agents/tasks?ticket=eyJ0aWNrZXQi.eyJ0aWNrZXQi.c2ln"
APP = "https://app.example.test/home?tab=1"


def session_jwt(**extra: Any) -> str:
    now = int(time.time())
    claims = {"sid": "sess_1", "sub": "user_1", "iat": now, "exp": now + 60, **extra}
    return unsigned_jwt(claims)


def sign_in_error(**answer: Any) -> SignInError:
    with fake_fapi(**answer) as http, pytest.raises(SignInError) as info:
        sign_in(TASK_URL, http=http)
    assert list(http.cookies.jar) == []
    return info.value


def handshake_with(lines: list[str]) -> str:
    return f"{APP}&__clerk_handshake={unsigned_jwt({'handshake': lines})}"


@pytest.mark.parametrize(
    ("answer", "expected", "hidden"),
    [
        (
            {"location": f"{APP}&__clerk_handshake=not-a-jwt"},
            "handshake is unusable: the handshake is not a JWT",
            "not-a-jwt",
        ),
        (
            {"location": f"{APP}&__clerk_handshake={unsigned_jwt({'nothing': []})}"},
            "no 'handshake' claim",
            None,
        ),
        ({"location": handshake_with(["__client_uat=0; Path=/"])}, "no __session cookie", None),
        (
            {"location": handshake_with(["__session=garbage; Path=/"])},
            "session token is not a JWT",
            "garbage",
        ),
        (
            {"location": handshake_with([f"__session={unsigned_jwt({'sub': 'u'})}; Path=/"])},
            "no string 'sid' and 'sub' claims",
            None,
        ),
        ({"location": APP}, "production instance as a cookie", None),
        ({"location": f"{APP}&__clerk_handshake_nonce=abc"}, "nonce", None),
        ({"status": 200, "body": b"<html>Bot traffic detected</html>"}, "answered 200", None),
        ({"status": 302}, "answered 302", None),
    ],
)
def test_answers_without_a_usable_handshake(
    answer: dict[str, Any], expected: str, hidden: str | None
) -> None:
    error = sign_in_error(**answer)
    assert expected in str(error)
    assert "ticket=***" in str(error)
    assert "eyJ0aWNrZXQi" not in str(error)
    if hidden is not None:
        assert hidden not in str(error)


def test_production_cookie_handshake_and_suffixed_names() -> None:
    token = session_jwt(act={"type": "agent", "sub": "agt_1", "task_id": "agttsk_1"})
    handshake = unsigned_jwt(
        {
            "handshake": [
                f"__session_Ab12={token}; Path=/; Domain=example.test; Secure; SameSite=Lax",
                f"__session={token}; Path=/; Max-Age=60; Secure; SameSite=Lax",
                "__client_uat_Ab12=1700000000; Path=/; Max-Age=31536000",
            ]
        }
    )
    cookie = f"__clerk_handshake={handshake}; Path=/; Domain=example.test; Secure; HttpOnly"
    with fake_fapi(location=APP, set_cookies=(cookie, "__client=c; Path=/; HttpOnly")) as http:
        signed_in = sign_in(TASK_URL, http=http)
        assert list(http.cookies.jar) == []
    assert (signed_in.session_id, signed_in.user_id) == ("sess_1", "user_1")
    assert signed_in.agent_task_id == "agttsk_1"
    assert signed_in.landing_url == APP
    assert signed_in.app_origin == "https://app.example.test"
    assert [c.name for c in signed_in.cookies] == [
        "__session_Ab12",
        "__session",
        "__client_uat_Ab12",
    ]
    assert signed_in.cookies[0].domain == "example.test"
    assert signed_in.cookies[1].expires is not None
    assert [c.name for c in signed_in.fapi_cookies] == ["__client"]


def test_handshake_params_are_removed_others_kept() -> None:
    handshake = unsigned_jwt({"handshake": [f"__session={session_jwt()}; Path=/"]})
    location = (
        "http://localhost:3000/a/b?__clerk_help=1&keep=1&__clerk_handshake="
        f"{handshake}&__clerk_db_jwt=dvb_1&__clerk_handshake_nonce=n&q=%2F#frag"
    )
    with fake_fapi(location=location) as http:
        signed_in = sign_in(TASK_URL, http=http)
    assert signed_in.landing_url == "http://localhost:3000/a/b?keep=1&q=%2F#frag"
    assert signed_in.app_origin == "http://localhost:3000"
    # The dev-browser token moves from the query into a cookie.
    db = {c.name: c for c in signed_in.cookies}["__clerk_db_jwt"]
    assert db.value == "dvb_1"


# --------------------------------------------------------------------------- #
# Tokens and cookies
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "empty"),
        ("abc.def", "2 dot-separated part"),
        ("a.!!!!.c", "not base64url"),
        ("a.bm90IGpzb24.c", "not JSON"),
        ("a.WzFd.c", "not an object"),
    ],
)
def test_decode_jwt_claims_rejects_garbage(token: str, message: str) -> None:
    with pytest.raises(MalformedTokenError, match=message) as info:
        decode_jwt_claims(token)
    assert isinstance(info.value, AgentTaskError)
    if token:
        assert token not in str(info.value)


def test_decode_jwt_claims() -> None:
    assert decode_jwt_claims(unsigned_jwt({"sub": "user_1"})) == {"sub": "user_1"}


def test_parse_set_cookie() -> None:
    cookie = parse_set_cookie(
        "__session_X=v=1; Path=/app; Domain=.Example.com; Max-Age=10; "
        "Expires=Wed, 21-Oct-2015 07:28:00 GMT; Secure; HttpOnly; SameSite=strict",
        now=1000.0,
    )
    assert cookie.name == "__session_X"
    assert cookie.value == "v=1"
    assert (cookie.path, cookie.domain, cookie.expires) == ("/app", "example.com", 1010.0)
    assert (cookie.secure, cookie.http_only, cookie.same_site) == (True, True, "Strict")
    assert "v=1" not in repr(cookie)
    expired = parse_set_cookie("a=; Expires=Wed, 21 Oct 2015 07:28:00 GMT")
    assert expired.expires == 1445412480.0
    assert expired.expired()
    assert parse_set_cookie("a=b", default_path="/x").path == "/x"
    assert parse_set_cookie("a=b; Max-Age=0", now=5.0).expired(now=5.0)
    with pytest.raises(ValueError, match="name=value"):
        parse_set_cookie("novalue; Path=/")


# --------------------------------------------------------------------------- #
# Redaction
# --------------------------------------------------------------------------- #


def test_no_secret_in_logs_reprs_or_errors(
    emulator: ClerkEmulator,
    backend: BackendClient,
    make_task: MakeTask,
    app: RecordingApp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    locations: list[str] = []

    def keep_location(response: httpx.Response) -> None:
        if "location" in response.headers:
            locations.append(response.headers["location"])

    texts: list[str] = []
    with httpx.Client(event_hooks={"response": [keep_location]}) as fapi:
        task = make_task()
        signed_in = sign_in(task, http=fapi)
        session = AgentSession(task, signed_in, backend, refresh_margin=3600)  # always mint
        assert session.client.get("/api/me").status_code == 200
        texts += [repr(signed_in), str(signed_in), repr(session), repr(task), repr(session.client)]
        texts += [repr(c) for c in signed_in.cookies + signed_in.fapi_cookies]
        try:
            sign_in(task, http=fapi)
        except ClerkAPIError as exc:
            texts += [str(exc), repr(exc)]
        session.close()

    [location] = locations
    query = parse_qs(urlsplit(location).query)
    assert task.url is not None
    secrets = {
        "ticket": parse_qs(urlsplit(str(task.url)).query)["ticket"][0],
        "handshake": query["__clerk_handshake"][0],
        "dev browser": query["__clerk_db_jwt"][0],
        "handshake token": signed_in.session_token,
        "minted token": app.seen[-1].cookies["__session"],
        "client": signed_in.fapi_cookies[0].value,
        "secret key": emulator.secret_key,
    }
    assert secrets["handshake token"] != secrets["minted token"]
    assert "HTTP Request: GET" in caplog.text  # httpx did log the visit
    assert "__clerk_handshake=***" in caplog.text  # and httpcore the Location
    everything = caplog.text + "\n".join(texts)
    for what, secret in secrets.items():
        assert secret not in everything, what


def test_log_filter_is_installed_once() -> None:
    from pytest_agenttask import _redact as module

    module.install_log_filter()
    module.install_log_filter()
    for name in ("httpx", "httpcore.http11", "httpcore.connection"):
        filters = logging.getLogger(name).filters
        assert sum(isinstance(f, module._MaskingFilter) for f in filters) == 1
