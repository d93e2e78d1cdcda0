"""Tests of the Backend API client, over loopback only.

Two kinds of server: the package's Clerk emulator, and a tiny scripted
``http.server`` below for answers the emulator does not produce (HTML pages,
broken JSON, HTTP-date ``Retry-After``, ...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from pytest_agenttask._redact import Secret
from pytest_agenttask.client import (
    CLERK_API_VERSION,
    DEFAULT_API_URL,
    DEFAULT_MAX_RATE_LIMIT_WAIT,
    AsyncBackendClient,
    BackendClient,
    RetryPolicy,
    _retry_after,
    _retry_exception,
)
from pytest_agenttask.errors import (
    AgentTaskError,
    ClerkAPIError,
    ClerkTransportError,
    ConfigurationError,
)
from pytest_agenttask.models import AgentTask, TaskURL

if TYPE_CHECKING:
    from pytest_agenttask.emulator import ClerkEmulator

SECRET = "sk_test_L0calSecretValueForTests"
TICKET = "eyJhbGciOiJSUzI1NiJ9.TICKETPAYLOAD.sig"
TASK_URL = f"https://fapi.example.test/v1/agents/tasks?ticket={TICKET}"


# --------------------------------------------------------------------------- #
# A scripted loopback server
# --------------------------------------------------------------------------- #


@dataclass
class Reply:
    """One scripted answer. ``drop`` closes the connection without answering."""

    status: int = 200
    body: Any = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    port: int


def task_json(task_id: str = "agttsk_1", *, url: str | None = TASK_URL) -> dict[str, Any]:
    data: dict[str, Any] = {
        "object": "agent_task",
        "agent_id": "agt_1",
        "agent_task_id": task_id,
        "task_id": task_id,
    }
    if url is not None:
        data["url"] = url
    return data


def clerk_error(status: int, code: str, trace: str | None = "trace_1") -> Reply:
    body: dict[str, Any] = {
        "errors": [{"message": f"{code} happened", "long_message": f"long {code}", "code": code}],
        "meta": {},
    }
    if trace is not None:
        body["clerk_trace_id"] = trace
    return Reply(status, body)


class LocalServer:
    """Answers each request with the next scripted reply; the last one repeats."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies) or [Reply()]
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with owner._lock:
                    owner.requests.append(
                        Seen(
                            self.command,
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            self.client_address[1],
                        )
                    )
                    reply = owner.replies.pop(0) if len(owner.replies) > 1 else owner.replies[0]
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    return
                payload = reply.body
                headers = dict(reply.headers)
                if isinstance(payload, (dict, list)):
                    payload = json.dumps(payload).encode()
                    headers.setdefault("Content-Type", "application/json")
                elif isinstance(payload, str):
                    payload = payload.encode()
                self.send_response_only(reply.status)
                headers.setdefault("Date", formatdate(usegmt=True))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and hung up is expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )
        self._thread.start()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[..., LocalServer]]:
    servers: list[LocalServer] = []

    def start(*replies: Reply) -> LocalServer:
        server = LocalServer(list(replies))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(sleeps: list[float]) -> Iterator[Callable[..., BackendClient]]:
    clients: list[BackendClient] = []

    def make(api_url: str, secret_key: str | Secret = SECRET, **kwargs: Any) -> BackendClient:
        kwargs.setdefault("sleep", sleeps.append)
        kwargs.setdefault("timeout", 2.0)
        client = BackendClient(secret_key, api_url=api_url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def create(client: BackendClient, **overrides: Any) -> AgentTask:
    params: dict[str, Any] = {
        "agent_name": "pytest",
        "task_description": "tests/test_client.py::create",
        "redirect_url": "http://localhost:3000/dashboard",
    }
    params.update(overrides)
    if "identifier" not in params:
        params.setdefault("user_id", "user_1")
    return client.create(**params)


def assert_backoff(waits: list[float], expected: list[float]) -> None:
    assert len(waits) == len(expected)
    for wait, base in zip(waits, expected, strict=True):
        assert base * 0.9 - 1e-9 <= wait <= base + 1e-9


# --------------------------------------------------------------------------- #
# Pure pieces
# --------------------------------------------------------------------------- #


def test_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(retries=6, backoff=0.5, max_backoff=3.0)
    assert [policy.delay(n, None, 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(1, None, 0.999) == pytest.approx(0.5 * (1 - 0.0999))


def test_retry_after_is_honoured_with_upward_jitter_and_too_long_gives_up() -> None:
    policy = RetryPolicy(max_backoff=30.0)
    assert policy.delay(1, 2.0, 0.0) == 2.0
    assert 2.0 <= (policy.delay(1, 2.0, 0.999) or 0) <= 2.2
    assert policy.delay(1, 30.0, 0.999) == 30.0
    assert policy.delay(1, 31.0, 0.0) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": " 1.5 "}, 1.5),
        ({"Retry-After": "-1"}, None),
        ({"Retry-After": "soon"}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"retry-after-ms": "x", "Retry-After": "9"}, 9.0),
        (
            {
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
                "Retry-After": "Wed, 21 Oct 2015 07:28:07 GMT",
            },
            7.0,
        ),
        (
            {
                "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
                "Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT",
            },
            0.0,
        ),
    ],
)
def test_retry_after_parsing(headers: dict[str, str], expected: float | None) -> None:
    assert _retry_after(httpx.Headers(headers)) == expected


def test_retry_after_http_date_without_date_header_uses_the_clock() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    later = formatdate((now + timedelta(seconds=4)).timestamp(), usegmt=True)
    assert _retry_after(httpx.Headers({"Retry-After": later}), now=now) == 4.0


@pytest.mark.parametrize(
    ("exc", "retry", "ambiguous"),
    [
        (httpx.ConnectError("refused"), True, False),
        (httpx.ConnectTimeout("slow"), True, False),
        (httpx.PoolTimeout("busy"), True, False),
        (httpx.ReadTimeout("slow"), True, True),
        (httpx.WriteTimeout("slow"), True, True),
        (httpx.ReadError("reset"), True, True),
        (httpx.RemoteProtocolError("gone"), True, True),
        (httpx.UnsupportedProtocol("ftp"), False, False),
        (httpx.LocalProtocolError("bad header"), False, False),
        (httpx.DecodingError("gzip"), False, False),
    ],
)
def test_exception_classification(exc: httpx.RequestError, retry: bool, ambiguous: bool) -> None:
    assert _retry_exception(exc) == (retry, ambiguous)


# --------------------------------------------------------------------------- #
# Construction and requests, against the scripted server
# --------------------------------------------------------------------------- #


def test_defaults_and_repr_hide_the_key(make_client: Callable[..., BackendClient]) -> None:
    client = BackendClient(SECRET)
    try:
        assert client.api_url == DEFAULT_API_URL
        assert repr(client) == f"BackendClient(api_url={DEFAULT_API_URL!r})"
        assert SECRET not in repr(client._http.auth)
        assert SECRET not in repr(vars(client))
    finally:
        client.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"api_url": "api.clerk.com/v1"},
        {"api_url": "ftp://api.clerk.com/v1"},
        {"timeout": 0},
        {"retries": -1},
        {"backoff": -0.1},
        {"max_rate_limit_wait": -1},
        {"max_rate_limit_wait": float("nan")},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        BackendClient(SECRET, **kwargs)


@pytest.mark.parametrize("key", ["", "sk_test_ with space", "sk_test_\n"])
def test_bad_keys_are_refused_without_showing_them(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        BackendClient(key)
    assert "sk_test_" not in str(info.value)


def test_create_sends_the_contract(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient]
) -> None:
    server = serve(Reply(200, task_json()))
    client = make_client(server.api_url + "/", secret_key=Secret(SECRET), user_agent="ua/1")
    task = create(client, session_max_duration_in_seconds=600)

    assert task == AgentTask(agent_id="agt_1", agent_task_id="agttsk_1", url=TaskURL(TASK_URL))
    assert isinstance(task.url, TaskURL)
    assert task.task_id == "agttsk_1"
    [seen] = server.requests
    assert (seen.method, seen.path) == ("POST", "/v1/agents/tasks")
    assert seen.headers["authorization"] == f"Bearer {SECRET}"
    assert seen.headers["accept"] == "application/json"
    assert seen.headers["clerk-api-version"] == CLERK_API_VERSION
    assert seen.headers["user-agent"] == "ua/1"
    assert seen.headers["content-type"] == "application/json"
    assert json.loads(seen.body) == {
        "on_behalf_of": {"user_id": "user_1"},
        "permissions": "*",
        "agent_name": "pytest",
        "task_description": "tests/test_client.py::create",
        "redirect_url": "http://localhost:3000/dashboard",
        "session_max_duration_in_seconds": 600,
    }
    assert client.stats.requests_sent == 1
    assert client.stats.retries == 0


def test_create_by_identifier_omits_unset_fields(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient]
) -> None:
    server = serve(Reply(200, task_json()))
    create(make_client(server.api_url), identifier="ada@example.com")
    body = json.loads(server.requests[0].body)
    assert body["on_behalf_of"] == {"identifier": "ada@example.com"}
    assert "session_max_duration_in_seconds" not in body
    assert server.requests[0].headers["user-agent"].startswith("pytest-agenttask/")


@pytest.mark.parametrize(
    "who", [{}, {"user_id": "user_1", "identifier": "ada@example.com"}], ids=["neither", "both"]
)
def test_both_or_neither_subject_is_refused_before_any_request(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    who: dict[str, Any],
) -> None:
    server = serve()
    client = make_client(server.api_url)
    with pytest.raises(ConfigurationError, match="exactly one of user_id or identifier"):
        client.create(agent_name="a", task_description="d", redirect_url="http://x/", **who)
    assert server.requests == []
    assert client.stats.requests_sent == 0


def test_revoke_sends_no_body_and_quotes_the_id(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient]
) -> None:
    server = serve(Reply(200, task_json("agttsk_a b", url=None)))
    task = make_client(server.api_url).revoke("agttsk_a b")
    assert task.url is None
    [seen] = server.requests
    assert (seen.method, seen.path) == ("POST", "/v1/agents/tasks/agttsk_a%20b/revoke")
    assert seen.body == b""
    assert "content-type" not in seen.headers


@pytest.mark.parametrize("bad_id", ["", "a/b", "..", "."])
def test_revoke_refuses_ids_that_escape_the_path(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient], bad_id: str
) -> None:
    server = serve()
    with pytest.raises(ConfigurationError, match="agent_task_id"):
        make_client(server.api_url).revoke(bad_id)
    assert server.requests == []


def test_generic_request_returns_json(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient]
) -> None:
    server = serve(Reply(200, [{"object": "session", "id": "sess_1"}]))
    client = make_client(server.api_url)
    sessions = client.request(
        "get", "/sessions", params={"user_id": "user_1", "status": "active"}, idempotent=True
    )
    assert sessions == [{"object": "session", "id": "sess_1"}]
    assert server.requests[0].method == "GET"
    assert server.requests[0].path == "/v1/sessions?user_id=user_1&status=active"
    with pytest.raises(ConfigurationError):
        client.request("GET", "sessions", idempotent=True)
    with pytest.raises(ConfigurationError):
        client.request("GET", "http://evil.test/x", idempotent=True)


def test_one_pooled_connection(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient]
) -> None:
    server = serve(Reply(200, task_json()))
    client = make_client(server.api_url)
    for _ in range(5):
        create(client)
    assert len(server.requests) == 5
    assert len({seen.port for seen in server.requests}) == 1


def test_loopback_ignores_proxy_settings(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    server = serve(Reply(200, task_json()))
    assert create(make_client(server.api_url)).agent_task_id == "agttsk_1"


def test_closed_client_refuses(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient]
) -> None:
    server = serve(Reply(200, task_json()))
    with make_client(server.api_url) as client:
        create(client)
    with pytest.raises(AgentTaskError, match="closed"):
        create(client)


# --------------------------------------------------------------------------- #
# Answers that are not what they should be
# --------------------------------------------------------------------------- #


def assert_no_json_traceback(error: BaseException) -> None:
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__


def test_clerk_error_envelope_becomes_clerk_api_error(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient]
) -> None:
    reply = clerk_error(422, "form_param_value_invalid")
    reply.body["errors"].append({"message": "second", "long_message": "2nd", "code": "other"})
    server = serve(reply)
    client = make_client(server.api_url)
    with pytest.raises(ClerkAPIError) as info:
        create(client)
    error = info.value
    assert (error.status, error.code) == (422, "form_param_value_invalid")
    assert error.message == "form_param_value_invalid happened"
    assert error.long_message == "long form_param_value_invalid"
    assert error.clerk_trace_id == "trace_1"
    assert [e["code"] for e in error.errors] == ["form_param_value_invalid", "other"]
    assert (error.method, error.path) == ("POST", "/agents/tasks")
    assert str(error) == (
        "POST /agents/tasks: Clerk answered 422 form_param_value_invalid: "
        "long form_param_value_invalid (clerk_trace_id trace_1)"
    )
    assert len(server.requests) == 1  # a 422 is not retried
    assert client.stats.retries == 0


@pytest.mark.parametrize(
    ("headers", "trace"),
    [
        ({"CF-Ray": "ray_1"}, "ray_1"),
        ({"Clerk-Trace-Id": "hdr_1", "CF-Ray": "ray_1"}, "hdr_1"),
        ({}, None),
    ],
)
def test_trace_id_falls_back_to_headers(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    headers: dict[str, str],
    trace: str | None,
) -> None:
    reply = clerk_error(404, "agent_task_not_found", trace=None)
    reply.headers.update(headers)
    server = serve(reply)
    with pytest.raises(ClerkAPIError) as info:
        make_client(server.api_url).revoke("agttsk_nope")
    assert info.value.clerk_trace_id == trace
    assert info.value.path == "/agents/tasks/agttsk_nope/revoke"


def test_html_error_page_is_a_transport_error(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient]
) -> None:
    page = f"<html><body><h1>404 Not Found</h1>\n<p>ticket={TICKET} {SECRET}</p></body></html>"
    server = serve(Reply(404, page, {"Content-Type": "text/html; charset=utf-8"}))
    with pytest.raises(ClerkTransportError) as info:
        create(make_client(server.api_url))
    message = str(info.value)
    assert message.startswith("POST /agents/tasks -> 404: Clerk answered with no Clerk error")
    assert "content-type text/html; charset=utf-8" in message
    assert "<html><body><h1>404 Not Found</h1> <p>ticket=***" in message
    assert "\n" not in message
    assert TICKET not in message
    assert SECRET not in message
    assert info.value.retryable is False
    assert len(server.requests) == 1


def test_html_gateway_page_is_retried_then_raised(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    server = serve(Reply(502, "<html>Bad Gateway</html>", {"Content-Type": "text/html"}))
    client = make_client(server.api_url, retries=2)
    with pytest.raises(ClerkTransportError) as info:
        client.revoke("agttsk_1")
    assert "-> 502" in str(info.value)
    assert "gave up after 3 attempts" in str(info.value)
    assert info.value.retryable is True
    assert len(server.requests) == 3
    assert_backoff(sleeps, [0.5, 1.0])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(200, b""), "Clerk answered with an empty body (content-type none, empty body)"),
        (
            Reply(200, b"{not json", {"Content-Type": "application/json"}),
            "Clerk answered with a body that is not JSON (content-type application/json, "
            "body '{not json')",
        ),
        (
            Reply(200, {"object": "user", "id": "user_1"}),
            "Clerk answered with object 'user', expected 'agent_task'",
        ),
        (Reply(200, ["agent_task"]), "Clerk answered with JSON that is not an object (list)"),
        (
            Reply(200, "<!doctype html><title>Sign in</title>", {"Content-Type": "text/html"}),
            "body '<!doctype html><title>Sign in</title>'",
        ),
        (Reply(200, task_json(url=None)), "created agent task agttsk_1 but sent no url"),
    ],
    ids=["empty", "invalid-json", "wrong-object", "wrong-type", "html", "no-url"],
)
def test_2xx_that_is_not_the_expected_json(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    reply: Reply,
    expected: str,
) -> None:
    server = serve(reply)
    client = make_client(server.api_url)
    with pytest.raises(ClerkTransportError) as info:
        create(client)
    assert str(info.value).startswith("POST /agents/tasks -> 200: ")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.retryable is False
    assert_no_json_traceback(info.value)
    assert len(server.requests) == 1  # never retried: a task may exist


def test_redirect_is_not_followed(
    serve: Callable[..., LocalServer], make_client: Callable[..., BackendClient]
) -> None:
    server = serve(Reply(302, b"", {"Location": "https://login.example.test/"}))
    with pytest.raises(ClerkTransportError, match=r"-> 302: Clerk answered with a redirect"):
        create(make_client(server.api_url))
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- #
# Retries, against the scripted server
# --------------------------------------------------------------------------- #


def test_retry_after_http_date(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    now = time.time()
    limited = clerk_error(429, "too_many_requests")
    limited.headers = {
        "Date": formatdate(now, usegmt=True),
        "Retry-After": formatdate(now + 5, usegmt=True),
    }
    server = serve(limited, Reply(200, task_json()))
    client = make_client(server.api_url)
    assert create(client).agent_task_id == "agttsk_1"
    assert len(sleeps) == 1
    assert 5.0 <= sleeps[0] <= 5.5
    assert (client.stats.requests_sent, client.stats.retries) == (2, 1)
    assert client.stats.ambiguous_creates == 0


def test_retry_after_ms(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    limited = clerk_error(429, "too_many_requests")
    limited.headers = {"retry-after-ms": "1500", "Retry-After": "2"}
    server = serve(limited, Reply(200, task_json()))
    create(make_client(server.api_url))
    assert len(sleeps) == 1
    assert 1.5 <= sleeps[0] <= 1.65


def test_retry_after_beyond_max_backoff_gives_up(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    # A failure (503) that asks for more than max_backoff: given up at once.
    # (A 429 is a rate limit, bounded by max_rate_limit_wait instead: see below.)
    unavailable = clerk_error(503, "service_unavailable")
    unavailable.headers = {"Retry-After": "120"}
    server = serve(unavailable)
    with pytest.raises(ClerkAPIError) as info:
        create(make_client(server.api_url, max_backoff=30))
    assert info.value.status == 503
    assert sleeps == []
    assert len(server.requests) == 1
    notes = getattr(info.value, "__notes__", [])
    assert notes in ([], ["not retried: Clerk asked to wait 120 s, more than max_backoff (30 s)"])


# Clerk's rate limit: a 429 that says how long to wait is waited out, outside the
# ``retries`` budget, within ``max_rate_limit_wait`` seconds of waits per call.


def rate_limited(seconds: str | None = "2") -> Reply:
    reply = clerk_error(429, "too_many_requests")
    if seconds is not None:
        reply.headers = {"Retry-After": seconds}
    return reply


def no_jitter(client: BackendClient) -> BackendClient:
    client._core.rand = lambda: 0.0
    return client


def test_rate_limit_delay_is_bounded_by_the_budget_not_by_max_backoff() -> None:
    policy = RetryPolicy(retries=0, max_backoff=1.0, max_rate_limit_wait=30.0)
    assert policy.rate_limit_delay(2.0, 0.0, 0.0) == 2.0
    assert 2.0 <= (policy.rate_limit_delay(2.0, 0.0, 0.999) or 0) <= 2.2
    assert policy.rate_limit_delay(20.0, 0.0, 0.0) == 20.0  # beyond max_backoff: still waited
    assert policy.rate_limit_delay(20.0, 9.0, 0.999) == 21.0  # jitter stops at the budget
    assert policy.rate_limit_delay(20.0, 11.0, 0.0) is None  # does not fit any more
    assert policy.rate_limit_delay(0.0, 0.0, 0.0) == 0.1  # "now" still counts
    assert RetryPolicy().max_rate_limit_wait == DEFAULT_MAX_RATE_LIMIT_WAIT == 120.0


def test_rate_limit_waits_do_not_consume_the_retries(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    server = serve(*[rate_limited("2")] * 6, Reply(200, task_json()))
    client = make_client(server.api_url, retries=1)
    assert create(client).agent_task_id == "agttsk_1"
    assert len(sleeps) == 6
    assert all(2.0 <= wait <= 2.2 for wait in sleeps)
    stats = client.stats
    assert (stats.requests_sent, stats.retries, stats.rate_limited) == (7, 6, 6)
    assert stats.rate_limit_wait == pytest.approx(sum(sleeps))
    assert stats.ambiguous_creates == 0


def test_rate_limit_waits_stop_at_max_rate_limit_wait(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    server = serve(rate_limited("10"))  # for ever
    client = no_jitter(make_client(server.api_url, retries=3, max_rate_limit_wait=35))
    with pytest.raises(ClerkAPIError) as info:
        create(client)
    assert info.value.status == 429
    assert sleeps == [10.0, 10.0, 10.0]  # a fourth would end past 35 s: not waited
    assert len(server.requests) == 4
    notes = getattr(info.value, "__notes__", [])
    assert notes in (
        [],
        [
            "not retried: Clerk asked to wait 10 s, more than is left of max_rate_limit_wait "
            "(30.0 of 35 s waited)",
            "gave up after 4 attempts",
        ],
    )


def test_retry_after_longer_than_the_whole_budget_gives_up_at_once(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    server = serve(rate_limited("3600"))
    with pytest.raises(ClerkAPIError):
        create(make_client(server.api_url))
    assert sleeps == []
    assert len(server.requests) == 1


def test_repeated_retry_after_zero_still_ends(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    server = serve(rate_limited("0"))
    client = no_jitter(make_client(server.api_url, max_rate_limit_wait=0.55))
    with pytest.raises(ClerkAPIError):
        create(client)
    assert sleeps == [0.1] * 5
    assert len(server.requests) == 6


def test_429_without_retry_after_uses_the_retries(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    server = serve(rate_limited(None))
    client = make_client(server.api_url, retries=2)
    with pytest.raises(ClerkAPIError) as info:
        create(client)
    assert info.value.status == 429
    assert_backoff(sleeps, [0.5, 1.0])
    assert (client.stats.requests_sent, client.stats.rate_limited) == (3, 0)


def test_rate_limit_and_failures_have_separate_budgets(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    sleeps: list[float],
) -> None:
    failed = clerk_error(503, "service_unavailable")
    server = serve(failed, rate_limited("1"), rate_limited("1"), failed, rate_limited("1"), failed)
    client = make_client(server.api_url, retries=2)
    with pytest.raises(ClerkAPIError) as info:
        create(client)
    assert info.value.status == 503  # the third failure: retries=2 spent
    assert len(server.requests) == 6
    assert len(sleeps) == 5
    assert_backoff([sleeps[0], sleeps[3]], [0.5, 1.0])
    assert all(1.0 <= sleeps[i] <= 1.1 for i in (1, 2, 4))
    assert (client.stats.retries, client.stats.rate_limited) == (5, 3)

    server = serve(failed, rate_limited("1"), failed, rate_limited("1"), Reply(200, task_json()))
    sleeps.clear()
    assert create(make_client(server.api_url, retries=2)).agent_task_id == "agttsk_1"
    assert len(sleeps) == 4



def test_connection_refused_is_retried_with_backoff(
    make_client: Callable[..., BackendClient], sleeps: list[float]
) -> None:
    server = LocalServer([])
    url = server.api_url
    server.close()  # nothing listens on that port any more
    client = make_client(url, retries=3, backoff=0.25)
    with pytest.raises(ClerkTransportError) as info:
        client.revoke("agttsk_1")
    message = str(info.value)
    assert message.startswith(
        f"POST /agents/tasks/agttsk_1/revoke: could not connect to Clerk at {url}"
    )
    assert "ConnectError" in message
    assert "gave up after 4 attempts" in message
    assert info.value.retryable is True
    assert_backoff(sleeps, [0.25, 0.5, 1.0])
    assert (client.stats.requests_sent, client.stats.retries) == (4, 3)
    assert client.stats.ambiguous_creates == 0


def test_read_timeout_on_create_is_ambiguous(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = serve(Reply(200, task_json("agttsk_slow"), delay=0.6), Reply(200, task_json()))
    client = make_client(server.api_url, timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="pytest_agenttask"):
        task = create(client)
    assert task.agent_task_id == "agttsk_1"
    assert client.stats.ambiguous_creates == 1
    [record] = [r for r in caplog.records if r.name == "pytest_agenttask"]
    assert record.levelno == logging.WARNING
    assert "POST /agents/tasks attempt 1 failed after the request was sent (ReadTimeout)" in (
        record.getMessage()
    )
    assert "may have been created server-side and left pending" in record.getMessage()
    assert record.getMessage().endswith("retrying")


def test_dropped_connection_on_revoke_is_retried_quietly(
    serve: Callable[..., LocalServer],
    make_client: Callable[..., BackendClient],
    caplog: pytest.LogCaptureFixture,
    sleeps: list[float],
) -> None:
    server = serve(Reply(drop=True), Reply(200, task_json(url=None)))
    client = make_client(server.api_url)
    with caplog.at_level(logging.WARNING):
        client.revoke("agttsk_1")
    assert len(server.requests) == 2
    assert client.stats.ambiguous_creates == 0
    assert caplog.records == []
    assert_backoff(sleeps, [0.5])


# --------------------------------------------------------------------------- #
# The async client, against the scripted server
# --------------------------------------------------------------------------- #


def test_async_client_shares_the_rules(serve: Callable[..., LocalServer]) -> None:
    server = serve(
        Reply(503, "busy", {"Content-Type": "text/plain", "Retry-After": "1"}),
        Reply(200, task_json()),
        Reply(200, {"oops": True}),
    )
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def main() -> None:
        async with AsyncBackendClient(SECRET, api_url=server.api_url, sleep=record) as client:
            assert repr(client) == f"AsyncBackendClient(api_url={server.api_url!r})"
            task = await client.create(
                agent_name="a", task_description="d", redirect_url="http://x/", user_id="u"
            )
            assert task.url == TASK_URL
            with pytest.raises(ClerkTransportError, match="expected 'agent_task'"):
                await client.revoke(task.agent_task_id)
            with pytest.raises(ConfigurationError):
                await client.create(agent_name="a", task_description="d", redirect_url="http://x/")
            assert (client.stats.requests_sent, client.stats.retries) == (3, 1)
        with pytest.raises(AgentTaskError, match="closed"):
            await client.revoke("agttsk_1")

    asyncio.run(main())
    assert len(waits) == 1
    assert 1.0 <= waits[0] <= 1.1
    assert {seen.port for seen in server.requests} == {server.requests[0].port}


def test_async_client_waits_out_the_rate_limit(serve: Callable[..., LocalServer]) -> None:
    server = serve(*[rate_limited("1")] * 3, Reply(200, task_json()), rate_limited("5"))
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def main() -> None:
        async with AsyncBackendClient(
            SECRET, api_url=server.api_url, sleep=record, retries=0, max_rate_limit_wait=8
        ) as client:
            await client.create(
                agent_name="a", task_description="d", redirect_url="http://x/", user_id="u"
            )
            assert client.stats.rate_limited == 3
            with pytest.raises(ClerkAPIError):  # 5 s more does not fit in 8
                await client.revoke("agttsk_1")

    asyncio.run(main())
    assert len(waits) == 4
    assert all(1.0 <= wait <= 1.1 for wait in waits[:3])
    assert 5.0 <= waits[3] <= 5.5


# --------------------------------------------------------------------------- #
# Against the Clerk emulator
# --------------------------------------------------------------------------- #


@pytest.fixture
def clerk(emulator: ClerkEmulator) -> ClerkEmulator:
    """The session's emulator (tests/conftest.py), reset for this test."""
    return emulator


@pytest.fixture
def client(clerk: ClerkEmulator, make_client: Callable[..., BackendClient]) -> BackendClient:
    return make_client(clerk.api_url, secret_key=clerk.secret_key)


def consume(task: AgentTask) -> None:
    assert task.url is not None
    with httpx.Client(follow_redirects=False) as browser:
        assert browser.get(str(task.url)).status_code == 307


def test_emulator_create_for_user_id(clerk: ClerkEmulator, client: BackendClient) -> None:
    task = create(client, user_id=clerk.default_user_id)
    assert task.agent_task_id.startswith("agttsk_")
    assert task.url is not None
    assert task.url.startswith(clerk.frontend_api_url)
    assert "ticket=" in task.url
    assert clerk.task(task.agent_task_id).status == "pending"


def test_emulator_create_for_identifier(clerk: ClerkEmulator, client: BackendClient) -> None:
    clerk.add_user(email_address="ada@example.com")
    task = create(client, identifier="ada@example.com", session_max_duration_in_seconds=300)
    assert clerk.task(task.agent_task_id).status == "pending"


def test_emulator_revoke_pending(clerk: ClerkEmulator, client: BackendClient) -> None:
    task = create(client, user_id=clerk.default_user_id)
    revoked = client.revoke(task.agent_task_id)
    assert revoked.agent_task_id == task.agent_task_id
    assert revoked.agent_id == task.agent_id
    assert revoked.url is None
    assert clerk.task(task.agent_task_id).status == "revoked"


def test_emulator_revoke_consumed(clerk: ClerkEmulator, client: BackendClient) -> None:
    task = create(client, user_id=clerk.default_user_id)
    consume(task)
    assert clerk.task(task.agent_task_id).status == "consumed"
    with pytest.raises(ClerkAPIError) as info:
        client.revoke(task.agent_task_id)
    assert (info.value.status, info.value.code) == (400, "agent_task_cannot_be_revoked")
    assert client.stats.retries == 0


def test_emulator_revoke_unknown(client: BackendClient) -> None:
    with pytest.raises(ClerkAPIError) as info:
        client.revoke("agttsk_doesnotexist")
    assert info.value.status == 404
    assert info.value.code == "agent_task_not_found"


def test_emulator_bad_key(clerk: ClerkEmulator, make_client: Callable[..., BackendClient]) -> None:
    client = make_client(clerk.api_url, secret_key="sk_test_WrongKeyEntirely")
    with pytest.raises(ClerkAPIError) as info:
        create(client, user_id=clerk.default_user_id)
    error = info.value
    assert error.status == 401
    assert error.code in {"authentication_invalid", "clerk_key_invalid"}
    assert error.message
    assert isinstance(error.long_message, str)
    assert error.errors
    assert error.errors[0]["code"] == error.code
    assert (error.method, error.path) == ("POST", "/agents/tasks")
    assert error.clerk_trace_id
    assert "WrongKeyEntirely" not in str(error) + repr(error)
    assert client.stats.retries == 0
    assert len(clerk.tasks) == 0


@pytest.mark.parametrize(
    ("retry_after", "expected"), [(None, 0.5), (2, 2.0)], ids=["backoff", "retry-after"]
)
def test_emulator_retries_429(
    clerk: ClerkEmulator,
    client: BackendClient,
    sleeps: list[float],
    retry_after: int | None,
    expected: float,
) -> None:
    clerk.inject_fault(path="/v1/agents/tasks", status=429, retry_after=retry_after)
    task = create(client, user_id=clerk.default_user_id)
    assert [r.status for r in clerk.requests][-2:] == [429, 200]
    assert len(sleeps) == 1
    if retry_after is None:
        assert_backoff(sleeps, [expected])
    else:
        assert expected <= sleeps[0] <= expected * 1.1
    assert client.stats.ambiguous_creates == 0
    assert len(clerk.pending_tasks()) == 1
    assert clerk.task(task.agent_task_id).status == "pending"


def test_emulator_rate_limit_is_met_by_waiting() -> None:
    # Clerk's limit, scaled down: 2 requests per second. Even with retries=0 every
    # call gets through, by waiting as the limiter's Retry-After says (real sleeps).
    from pytest_agenttask.emulator import ClerkEmulator

    with ClerkEmulator(rate_limit=True, rate_limit_requests=2, rate_limit_window=1.0) as clerk:
        with BackendClient(clerk.secret_key, api_url=clerk.api_url, retries=0) as client:
            started = time.monotonic()
            tasks = [create(client, user_id=clerk.default_user_id) for _ in range(4)]
            for task in tasks:
                client.revoke(task.agent_task_id)
            elapsed = time.monotonic() - started
        assert [r.status for r in clerk.requests].count(429) == client.stats.rate_limited >= 1
        assert client.stats.rate_limit_wait >= 1.0
        assert elapsed >= 3.0  # 8 requests at 2 per second
        assert clerk.pending_tasks() == []


@pytest.mark.parametrize(("status", "ambiguous"), [(503, 0), (500, 1)])
def test_emulator_retries_5xx(
    clerk: ClerkEmulator,
    client: BackendClient,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    status: int,
    ambiguous: int,
) -> None:
    clerk.inject_fault(path="/v1/agents/tasks", status=status, times=2)
    with caplog.at_level(logging.WARNING, logger="pytest_agenttask"):
        create(client, user_id=clerk.default_user_id)
    assert_backoff(sleeps, [0.5, 1.0])
    assert client.stats.requests_sent == 3
    assert client.stats.ambiguous_creates == 2 * ambiguous
    warnings = [r for r in caplog.records if r.name == "pytest_agenttask"]
    assert len(warnings) == 2 * ambiguous


def test_emulator_ambiguous_create_leaves_an_orphan(
    clerk: ClerkEmulator,
    client: BackendClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clerk.inject_fault(path="/v1/agents/tasks", drop=True, processed=True)
    with caplog.at_level(logging.WARNING, logger="pytest_agenttask"):
        task = create(client, user_id=clerk.default_user_id)
    assert client.stats.ambiguous_creates == 1
    assert len(clerk.pending_tasks()) == 2  # the orphan and ours
    [record] = [r for r in caplog.records if r.name == "pytest_agenttask"]
    assert record.levelno == logging.WARNING
    assert "may have been created server-side and left pending" in record.getMessage()
    assert clerk.task(task.agent_task_id).status == "pending"


def test_emulator_dropped_connection_on_revoke(
    clerk: ClerkEmulator, client: BackendClient, sleeps: list[float]
) -> None:
    task = create(client, user_id=clerk.default_user_id)
    clerk.inject_fault(path=f"/v1/agents/tasks/{task.agent_task_id}/revoke", drop=True)
    client.revoke(task.agent_task_id)
    assert clerk.task(task.agent_task_id).status == "revoked"
    assert len(sleeps) == 1
    assert client.stats.ambiguous_creates == 0


def test_emulator_retried_revoke_that_had_succeeded(
    clerk: ClerkEmulator, client: BackendClient
) -> None:
    task = create(client, user_id=clerk.default_user_id)
    clerk.inject_fault(
        path=f"/v1/agents/tasks/{task.agent_task_id}/revoke", drop=True, processed=True
    )
    with pytest.raises(ClerkAPIError) as info:
        client.revoke(task.agent_task_id)
    assert info.value.code == "agent_task_cannot_be_revoked"
    assert clerk.task(task.agent_task_id).status == "revoked"


def test_emulator_gives_up_after_retries(
    clerk: ClerkEmulator, make_client: Callable[..., BackendClient], sleeps: list[float]
) -> None:
    client = make_client(clerk.api_url, secret_key=clerk.secret_key, retries=2)
    clerk.inject_fault(path="/v1/agents/tasks", status=503, times=10)
    with pytest.raises(ClerkAPIError) as info:
        create(client, user_id=clerk.default_user_id)
    assert info.value.status == 503
    assert client.stats.requests_sent == 3
    assert len(sleeps) == 2
    assert clerk.pending_tasks() == []


def test_emulator_html_gateway_error(
    clerk: ClerkEmulator, client: BackendClient, sleeps: list[float]
) -> None:
    clerk.inject_fault(path="/v1/agents/tasks", status=502, body="<h1>Bad gateway</h1>", times=-1)
    with pytest.raises(ClerkTransportError) as info:
        create(client, user_id=clerk.default_user_id)
    assert str(info.value) == (
        "POST /agents/tasks -> 502: Clerk answered with no Clerk error envelope "
        "(content-type text/html; charset=utf-8, body '<h1>Bad gateway</h1>') "
        "(gave up after 4 attempts)"
    )
    assert client.stats.ambiguous_creates == 4
    assert len(sleeps) == 3


def test_emulator_no_retry_on_422(clerk: ClerkEmulator, client: BackendClient) -> None:
    clerk.inject_fault(path="/v1/agents/tasks", status=422)
    with pytest.raises(ClerkAPIError) as info:
        create(client, user_id=clerk.default_user_id)
    assert info.value.status == 422
    assert client.stats.requests_sent == 1


def test_emulator_unknown_identifier(client: BackendClient) -> None:
    with pytest.raises(ClerkAPIError) as info:
        create(client, identifier="nobody@example.com")
    assert info.value.status in (404, 422)
    assert client.stats.requests_sent == 1


def test_emulator_nothing_secret_leaks(
    clerk: ClerkEmulator,
    make_client: Callable[..., BackendClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = clerk.secret_key
    client = make_client(clerk.api_url, secret_key=secret, timeout=0.5)
    texts: list[str] = [repr(client)]
    with caplog.at_level(logging.DEBUG):
        clerk.inject_fault(path="/v1/agents/tasks", status=500)
        task = create(client, user_id=clerk.default_user_id)
        assert task.url is not None
        ticket = urllib.parse.parse_qs(urllib.parse.urlsplit(task.url).query)["ticket"][0]
        texts += [repr(task), repr(task.url), repr(task.raw), str(client.stats)]
        client.revoke(task.agent_task_id)
        calls: list[Callable[[], object]] = [
            lambda: client.revoke(task.agent_task_id),
            lambda: client.revoke("agttsk_missing"),
            lambda: create(make_client(clerk.api_url, secret_key=secret + "x"), user_id="u"),
        ]
        for call in calls:
            with pytest.raises(AgentTaskError) as info:
                call()
            texts += [str(info.value), repr(info.value), str(info.getrepr())]
    texts += [r.getMessage() for r in caplog.records]
    texts.append(caplog.text)
    assert any("POST /agents/tasks -> 500" in r.getMessage() for r in caplog.records)
    for text in texts:
        assert secret not in text
        assert ticket not in text


def test_emulator_async_client(clerk: ClerkEmulator) -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def main() -> None:
        async with AsyncBackendClient(
            clerk.secret_key, api_url=clerk.api_url, sleep=record, timeout=2.0
        ) as client:
            clerk.inject_fault(path="/v1/agents/tasks", status=429, retry_after=1)
            task = await client.create(
                agent_name="pytest",
                task_description="async",
                redirect_url="http://localhost:3000/",
                user_id=clerk.default_user_id,
            )
            assert clerk.task(task.agent_task_id).status == "pending"
            revoked = await client.revoke(task.agent_task_id)
            assert revoked.url is None
            with pytest.raises(ClerkAPIError) as info:
                await client.revoke(task.agent_task_id)
            assert info.value.code == "agent_task_cannot_be_revoked"
            assert client.stats.retries == 1

    asyncio.run(main())
    assert len(waits) == 1
    assert 1.0 <= waits[0] <= 1.1
