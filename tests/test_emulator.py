"""The Clerk emulator over real loopback sockets: the HTTP contract, faults,
rate limit, state, lifecycle and the ``python -m`` command."""

from __future__ import annotations

import ast
import base64
import json
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from pytest_agenttask.emulator import ClerkEmulator, EmulatedTask

ROOT = Path(__file__).resolve().parents[1]
BASE62_27 = "[0-9A-Za-z]{27}"
TASK_ID = re.compile(f"agttsk_{BASE62_27}")
AGENT_ID = re.compile(f"agt_{BASE62_27}")
USER_ID = re.compile(f"user_{BASE62_27}")
TRACE_ID = re.compile("[0-9a-f]{32}")
TICKET = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
APP_URL = "http://localhost:3000/after?tab=1&q=a%20b"

# The schemas in Clerk's bapi-2026-05-12.yml; test_schemas_match_the_openapi_document
# checks these copies against the document when it is available.
AGENT_TASK_PROPERTIES = {"object", "agent_id", "agent_task_id", "task_id", "url"}
AGENT_TASK_REQUIRED = {"object", "agent_id", "agent_task_id", "task_id"}
CLERK_ERRORS_PROPERTIES = {"errors", "meta", "clerk_trace_id"}
CLERK_ERRORS_REQUIRED = {"errors"}
CLERK_ERROR_PROPERTIES = {"message", "long_message", "code", "meta"}
CLERK_ERROR_REQUIRED = {"message", "long_message", "code"}
CREATE_PROPERTIES = {
    "on_behalf_of",
    "permissions",
    "agent_name",
    "task_description",
    "redirect_url",
    "session_max_duration_in_seconds",
}
CREATE_REQUIRED = CREATE_PROPERTIES - {"session_max_duration_in_seconds"}

OMIT: Any = object()


# -- helpers ---------------------------------------------------------------


def assert_agent_task(body: Any, *, with_url: bool) -> None:
    """``body`` is an AgentTask: required fields, nothing undeclared, ids well formed."""
    assert isinstance(body, dict)
    assert AGENT_TASK_REQUIRED <= body.keys() <= AGENT_TASK_PROPERTIES
    assert ("url" in body) is with_url
    assert body["object"] == "agent_task"
    assert TASK_ID.fullmatch(body["agent_task_id"])
    assert AGENT_ID.fullmatch(body["agent_id"])
    assert body["task_id"] == body["agent_task_id"]


def expect_error(
    response: httpx.Response, status: int, code: str, param: str | None = None
) -> dict[str, Any]:
    """Check a Clerk error answer and return the error entry with ``code`` (and ``param``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert CLERK_ERRORS_REQUIRED <= body.keys() <= CLERK_ERRORS_PROPERTIES
    assert TRACE_ID.fullmatch(body["clerk_trace_id"])
    assert body["meta"] == {}
    assert body["errors"]
    for error in body["errors"]:
        assert CLERK_ERROR_REQUIRED <= error.keys() <= CLERK_ERROR_PROPERTIES
        assert all(isinstance(error[key], str) and error[key] for key in CLERK_ERROR_REQUIRED)
        assert isinstance(error["meta"], dict)
    matching: list[dict[str, Any]] = [
        error
        for error in body["errors"]
        if error["code"] == code and (param is None or error["meta"].get("param_name") == param)
    ]
    assert matching, f"no {code} ({param}) in {body['errors']}"
    return matching[0]


def first_code(response: httpx.Response) -> str:
    code = response.json()["errors"][0]["code"]
    assert isinstance(code, str)
    return code


def task_body(clerk: ClerkEmulator, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "on_behalf_of": {"user_id": clerk.default_user_id},
        "permissions": "*",
        "agent_name": "checkout-agent",
        "task_description": "buy the thing",
        "redirect_url": APP_URL,
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not OMIT}


@dataclass
class Backend:
    """A thin Backend API client for the tests, authenticated by default."""

    clerk: ClerkEmulator
    http: httpx.Client

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.clerk.secret_key}", **extra}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("headers", self.headers())
        return self.http.request(method, f"{self.clerk.api_url}{path}", **kwargs)

    def create(self, **overrides: Any) -> httpx.Response:
        return self.request("POST", "/agents/tasks", json=task_body(self.clerk, **overrides))

    def create_ok(self, **overrides: Any) -> dict[str, Any]:
        response = self.create(**overrides)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def revoke(self, task_id: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", f"/agents/tasks/{task_id}/revoke", **kwargs)


# Nothing here speaks TLS; one shared context spares each client loading the CA bundle.
_TLS = ssl.create_default_context()


def new_client(*, timeout: float = 5.0, follow_redirects: bool = False) -> httpx.Client:
    return httpx.Client(timeout=timeout, follow_redirects=follow_redirects, verify=_TLS)


def ticket_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["ticket"][0]


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


# -- fixtures --------------------------------------------------------------


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with new_client() as client:
        yield client


@pytest.fixture
def bapi(clerk: ClerkEmulator, http: httpx.Client) -> Backend:
    return Backend(clerk, http)


# -- authentication --------------------------------------------------------


def test_a_request_without_authorization_is_unauthenticated(bapi: Backend) -> None:
    response = bapi.request("POST", "/agents/tasks", headers={}, json={})
    expect_error(response, 401, "authentication_invalid")


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "sk_test_abc", "Bearer a b", "Token x"],
)
def test_a_malformed_authorization_header_is_refused(bapi: Backend, header: str) -> None:
    response = bapi.request("POST", "/agents/tasks", headers={"Authorization": header}, json={})
    expect_error(response, 401, "authorization_header_format_invalid")


def test_a_wrong_secret_key_is_refused(bapi: Backend) -> None:
    headers = {"Authorization": "Bearer sk_test_not_the_right_one"}
    response = bapi.request("POST", "/agents/tasks", headers=headers, json={})
    expect_error(response, 401, "clerk_key_invalid")


def test_the_bearer_scheme_is_case_insensitive(bapi: Backend, clerk: ClerkEmulator) -> None:
    headers = {"Authorization": f"bearer {clerk.secret_key}"}
    response = bapi.request("POST", "/agents/tasks", headers=headers, json=task_body(clerk))
    assert response.status_code == 200


def test_authentication_comes_before_routing(bapi: Backend) -> None:
    expect_error(bapi.request("GET", "/nothing/here", headers={}), 401, "authentication_invalid")


def test_a_given_secret_key_is_the_one_accepted() -> None:
    key = "sk_test_" + "k" * 40
    with ClerkEmulator(secret_key=key) as clerk, new_client() as http:
        assert clerk.secret_key == key
        assert Backend(clerk, http).create().status_code == 200


def test_two_emulators_have_different_random_keys() -> None:
    assert ClerkEmulator().secret_key != ClerkEmulator().secret_key


@pytest.mark.parametrize("key", ["pk_test_abc123", "sk_test_has space", "hunter2", "", "sk_test_"])
def test_an_implausible_secret_key_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(ValueError, match="sk_test_<base62>") as info:
        ClerkEmulator(secret_key=key)
    assert not key or key == "sk_test_" or key not in str(info.value)


# -- API versions ----------------------------------------------------------


@pytest.mark.parametrize(
    "version", ["2021-02-05", "2024-10-01", "2025-04-10", "2025-11-10", "2026-03-19", "2026-05-12"]
)
def test_known_api_versions_are_accepted(bapi: Backend, version: str) -> None:
    response = bapi.request(
        "POST",
        "/agents/tasks",
        headers=bapi.headers(**{"Clerk-API-Version": version}),
        json=task_body(bapi.clerk),
    )
    assert response.status_code == 200


def test_the_api_version_may_come_as_a_query_parameter(bapi: Backend) -> None:
    response = bapi.request(
        "POST",
        "/agents/tasks?__clerk_api_version=2025-11-10",
        json=task_body(bapi.clerk),
    )
    assert response.status_code == 200


@pytest.mark.parametrize("version", ["2020-01-01", "latest", "", "2025-11-10x"])
def test_an_unknown_api_version_is_refused(bapi: Backend, version: str) -> None:
    headers = bapi.headers(**{"Clerk-API-Version": version})
    response = bapi.request("POST", "/agents/tasks", headers=headers, json=task_body(bapi.clerk))
    expect_error(response, 400, "api_version_invalid")
    assert bapi.clerk.tasks == []


def test_an_api_version_given_twice_is_refused(bapi: Backend) -> None:
    headers = bapi.headers(**{"Clerk-API-Version": "2025-11-10"})
    response = bapi.request(
        "POST",
        "/agents/tasks?__clerk_api_version=2025-11-10",
        headers=headers,
        json=task_body(bapi.clerk),
    )
    expect_error(response, 400, "api_version_invalid")


# -- create ----------------------------------------------------------------


def test_create_answers_an_agent_task_with_a_url(bapi: Backend, clerk: ClerkEmulator) -> None:
    before = time.time()
    response = bapi.create()
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert_agent_task(body, with_url=True)
    url = body["url"]
    assert url.startswith(f"{clerk.frontend_api_url}/v1/agents/tasks?ticket=")
    assert set(parse_qs(urlsplit(url).query)) == {"ticket"}
    assert TICKET.fullmatch(ticket_of(url))
    task = clerk.task(body["agent_task_id"])
    assert task == EmulatedTask(
        agent_task_id=body["agent_task_id"],
        agent_id=body["agent_id"],
        user_id=clerk.default_user_id,
        agent_name="checkout-agent",
        task_description="buy the thing",
        redirect_url=APP_URL,
        session_max_duration_in_seconds=1800,
        status="pending",
        created_at=task.created_at,
    )
    assert before <= task.created_at <= time.time()


def test_the_agent_id_is_stable_per_agent_name(bapi: Backend) -> None:
    first = bapi.create_ok(agent_name="alpha")
    second = bapi.create_ok(agent_name="alpha")
    other = bapi.create_ok(agent_name="beta")
    assert first["agent_id"] == second["agent_id"] != other["agent_id"]
    assert len({first["agent_task_id"], second["agent_task_id"], other["agent_task_id"]}) == 3
    assert len({ticket_of(t["url"]) for t in (first, second, other)}) == 3


def test_the_session_duration_can_be_chosen(bapi: Backend, clerk: ClerkEmulator) -> None:
    body = bapi.create_ok(session_max_duration_in_seconds=300)
    assert clerk.task(body["agent_task_id"]).session_max_duration_in_seconds == 300


@pytest.mark.parametrize(
    ("field", "value"),
    [("email_address", "Ada@Example.com"), ("phone_number", "+15555550100"), ("username", "ADA")],
)
def test_the_user_can_be_named_by_a_verified_identifier(
    bapi: Backend, clerk: ClerkEmulator, field: str, value: str
) -> None:
    user_id = clerk.add_user(
        email_address="ada@example.com", phone_number="+15555550100", username="ada"
    )
    try:
        body = bapi.create_ok(on_behalf_of={"identifier": value})
        assert clerk.task(body["agent_task_id"]).user_id == user_id
    finally:
        clerk.delete_user(user_id)


def test_the_default_user_has_a_verified_email(bapi: Backend, clerk: ClerkEmulator) -> None:
    assert USER_ID.fullmatch(clerk.default_user_id)
    assert clerk.user(clerk.default_user_id).email_address == "agent@example.com"
    body = bapi.create_ok(on_behalf_of={"identifier": "agent@example.com"})
    assert clerk.task(body["agent_task_id"]).user_id == clerk.default_user_id


def test_an_unknown_user_id_is_not_found(bapi: Backend, clerk: ClerkEmulator) -> None:
    response = bapi.create(on_behalf_of={"user_id": "user_" + "x" * 27})
    expect_error(response, 404, "resource_not_found")
    assert clerk.tasks == []


@pytest.mark.parametrize("identifier", ["nobody@example.com", "+15555550199", "nobody"])
def test_an_unknown_identifier_is_not_found(bapi: Backend, identifier: str) -> None:
    response = bapi.create(on_behalf_of={"identifier": identifier})
    expect_error(response, 422, "form_identifier_not_found", "on_behalf_of.identifier")


def test_an_unverified_identifier_identifies_nobody(bapi: Backend, clerk: ClerkEmulator) -> None:
    user_id = clerk.add_user(email_address="new@example.com", verified=False)
    try:
        response = bapi.create(on_behalf_of={"identifier": "new@example.com"})
        expect_error(response, 422, "form_identifier_not_found")
    finally:
        clerk.delete_user(user_id)


@pytest.mark.parametrize("field", sorted(CREATE_REQUIRED))
@pytest.mark.parametrize("how", ["absent", "null", "empty"])
def test_a_missing_required_parameter_is_reported(bapi: Backend, field: str, how: str) -> None:
    value = {"absent": OMIT, "null": None, "empty": "" if field != "on_behalf_of" else {}}[how]
    response = bapi.create(**{field: value})
    error = expect_error(response, 422, "form_param_missing", field)
    assert len(response.json()["errors"]) == 1
    assert error["message"] in ("is missing", "at least one parameter must be provided")
    assert field in error["long_message"]


def test_every_problem_is_reported_at_once(bapi: Backend) -> None:
    response = bapi.request("POST", "/agents/tasks", json={"extra": 1})
    expect_error(response, 422, "form_param_unknown", "extra")
    missing = [e["meta"]["param_name"] for e in response.json()["errors"][1:]]
    assert set(missing) == CREATE_REQUIRED
    assert first_code(response) == "form_param_unknown"


def test_an_empty_body_misses_every_required_parameter(bapi: Backend) -> None:
    response = bapi.request("POST", "/agents/tasks")
    for field in CREATE_REQUIRED:
        expect_error(response, 422, "form_param_missing", field)


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("on_behalf_of", "user_x", "on_behalf_of"),
        ("on_behalf_of", {"user_id": 7}, "on_behalf_of.user_id"),
        ("on_behalf_of", {"identifier": ["a@b.c"]}, "on_behalf_of.identifier"),
        ("permissions", ["*"], "permissions"),
        ("agent_name", 1, "agent_name"),
        ("task_description", {"a": 1}, "task_description"),
        ("redirect_url", True, "redirect_url"),
        ("session_max_duration_in_seconds", "1800", "session_max_duration_in_seconds"),
        ("session_max_duration_in_seconds", 1800.5, "session_max_duration_in_seconds"),
        ("session_max_duration_in_seconds", True, "session_max_duration_in_seconds"),
    ],
)
def test_a_parameter_of_the_wrong_type_is_refused(
    bapi: Backend, field: str, value: Any, param: str
) -> None:
    response = bapi.create(**{field: value})
    expect_error(response, 422, "form_param_type_invalid", param)
    assert first_code(response) == "form_param_type_invalid"


def test_permissions_must_be_the_wildcard(bapi: Backend) -> None:
    response = bapi.create(permissions="read")
    expect_error(response, 422, "form_param_value_invalid", "permissions")


def test_an_unknown_parameter_is_refused(bapi: Backend, clerk: ClerkEmulator) -> None:
    response = bapi.create(expires_in_seconds=60)
    error = expect_error(response, 422, "form_param_unknown", "expires_in_seconds")
    assert error["message"] == "is unknown"
    assert clerk.tasks == []


def test_an_unknown_on_behalf_of_key_is_refused(bapi: Backend, clerk: ClerkEmulator) -> None:
    on_behalf_of = {"user_id": clerk.default_user_id, "email": "agent@example.com"}
    response = bapi.create(on_behalf_of=on_behalf_of)
    expect_error(response, 422, "form_param_unknown", "on_behalf_of.email")


def test_on_behalf_of_takes_only_one_of_user_id_and_identifier(
    bapi: Backend, clerk: ClerkEmulator
) -> None:
    on_behalf_of = {"user_id": clerk.default_user_id, "identifier": "agent@example.com"}
    response = bapi.create(on_behalf_of=on_behalf_of)
    expect_error(response, 422, "form_param_value_invalid", "on_behalf_of")


@pytest.mark.parametrize("duration", [0, -30])
def test_the_session_duration_must_be_positive(bapi: Backend, duration: int) -> None:
    response = bapi.create(session_max_duration_in_seconds=duration)
    expect_error(response, 422, "form_param_value_invalid", "session_max_duration_in_seconds")


@pytest.mark.parametrize(
    "url",
    [
        "/after-sign-in",
        "localhost:3000/x",
        "example.com/x",
        "http://x y",
        "http://[::1",
        "http://localhost:port/",
        "http:/no-host",
        "javascript:alert(1)",
        "mailto:agent@localhost",
    ],
)
def test_a_redirect_url_that_is_not_an_absolute_url_is_refused_at_creation(
    bapi: Backend, url: str
) -> None:
    response = bapi.create(redirect_url=url)
    expect_error(response, 422, "form_param_format_invalid", "redirect_url")


def test_a_foreign_redirect_host_is_accepted_at_creation(bapi: Backend) -> None:
    # The spec rejects a bad host only when the ticket is consumed.
    bapi.create_ok(redirect_url="https://evil.example/landing")


@pytest.mark.parametrize(
    ("content_type", "content"),
    [
        ("text/plain", b'{"permissions": "*"}'),
        ("application/x-www-form-urlencoded", b"permissions=*"),
        (None, b'{"permissions": "*"}'),
    ],
)
def test_a_body_that_is_not_json_is_unsupported(
    bapi: Backend, content_type: str | None, content: bytes
) -> None:
    headers = bapi.headers()
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = bapi.request("POST", "/agents/tasks", headers=headers, content=content)
    expect_error(response, 415, "unsupported_content_type")


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b"null"])
def test_a_body_that_is_not_a_json_object_is_invalid(bapi: Backend, content: bytes) -> None:
    headers = bapi.headers(**{"Content-Type": "application/json; charset=utf-8"})
    response = bapi.request("POST", "/agents/tasks", headers=headers, content=content)
    expect_error(response, 400, "request_body_invalid")


def test_a_chunked_body_is_read(bapi: Backend) -> None:
    data = json.dumps(task_body(bapi.clerk)).encode()
    headers = bapi.headers(**{"Content-Type": "application/json"})
    response = bapi.request(
        "POST", "/agents/tasks", headers=headers, content=iter([data[:10], data[10:]])
    )
    assert response.status_code == 200


def test_an_oversized_body_is_refused(bapi: Backend) -> None:
    headers = bapi.headers(**{"Content-Type": "application/json"})
    content = b'{"agent_name": "' + b"x" * (1 << 20) + b'"}'
    response = bapi.request("POST", "/agents/tasks", headers=headers, content=content)
    expect_error(response, 413, "request_body_too_large")


def test_a_bad_content_length_is_malformed(clerk: ClerkEmulator) -> None:
    port = urlsplit(clerk.api_url).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/agents/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n"
            b"Authorization: Bearer " + clerk.secret_key.encode() + b"\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Connection: close" in head
    assert json.loads(body)["errors"][0]["code"] == "malformed_request_parameters"


# -- revoke ----------------------------------------------------------------


def test_revoking_a_pending_task(bapi: Backend, clerk: ClerkEmulator) -> None:
    created = bapi.create_ok()
    response = bapi.revoke(created["agent_task_id"])
    assert response.status_code == 200
    body = response.json()
    assert_agent_task(body, with_url=False)
    assert body == {key: created[key] for key in AGENT_TASK_REQUIRED}
    task = clerk.task(created["agent_task_id"])
    assert task.status == "revoked"
    assert task.revoked_at is not None
    assert clerk.pending_tasks() == []


def test_revoke_ignores_a_body(bapi: Backend) -> None:
    created = bapi.create_ok()
    response = bapi.revoke(created["agent_task_id"], json={"whatever": True})
    assert response.status_code == 200


def test_a_task_cannot_be_revoked_twice(bapi: Backend) -> None:
    created = bapi.create_ok()
    bapi.revoke(created["agent_task_id"])
    expect_error(bapi.revoke(created["agent_task_id"]), 400, "agent_task_cannot_be_revoked")


def test_a_consumed_task_cannot_be_revoked(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    created = bapi.create_ok()
    assert http.get(created["url"]).status_code == 307
    expect_error(bapi.revoke(created["agent_task_id"]), 400, "agent_task_cannot_be_revoked")
    assert clerk.task(created["agent_task_id"]).status == "consumed"


def test_revoking_an_unknown_task(bapi: Backend) -> None:
    expect_error(bapi.revoke("agttsk_" + "0" * 27), 404, "agent_task_not_found")


def test_revoking_the_task_of_a_deleted_user(bapi: Backend, clerk: ClerkEmulator) -> None:
    user_id = clerk.add_user(email_address="gone@example.com")
    created = bapi.create_ok(on_behalf_of={"user_id": user_id})
    clerk.delete_user(user_id)
    expect_error(bapi.revoke(created["agent_task_id"]), 404, "agent_task_subject_not_found")


# -- routing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/organizations",
        "/agents/tasks/",
        "/agents/tasks/agttsk_x",
        "/agents/tasks//revoke",
        "/sessions/",
        "/sessions/sess_x/refresh",
        "/users/user_x",
    ],
)
def test_an_unknown_route_is_not_found(bapi: Backend, path: str) -> None:
    expect_error(bapi.request("POST", path), 404, "resource_not_found")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/agents/tasks", "POST"),
        ("DELETE", "/agents/tasks", "POST"),
        ("GET", "/agents/tasks/x/revoke", "POST"),
        ("POST", "/users", "GET"),
        ("POST", "/jwks", "GET"),
        ("DELETE", "/sessions/sess_x", "GET"),
        ("GET", "/sessions/sess_x/revoke", "POST"),
        ("GET", "/sessions/sess_x/tokens", "POST"),
    ],
)
def test_a_wrong_method_is_not_allowed(bapi: Backend, method: str, path: str, allow: str) -> None:
    response = bapi.request(method, path)
    expect_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


def test_keep_alive_reuses_one_connection(bapi: Backend) -> None:
    peers = set()
    for _ in range(3):
        with bapi.http.stream(
            "POST",
            f"{bapi.clerk.api_url}/agents/tasks",
            headers=bapi.headers(),
            json=task_body(bapi.clerk),
        ) as response:
            assert response.http_version == "HTTP/1.1"
            assert "connection" not in response.headers
            stream = response.extensions["network_stream"]
            peers.add(stream.get_extra_info("socket").getsockname())
            response.read()
    assert len(peers) == 1


# -- frontend API: consuming the ticket -------------------------------------


def test_visiting_the_url_signs_in_once_and_redirects(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    created = bapi.create_ok()
    response = http.get(created["url"])
    assert response.status_code == 307
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"
    location = urlsplit(response.headers["location"])
    app = urlsplit(APP_URL)
    assert (location.scheme, location.netloc, location.path) == (app.scheme, app.netloc, app.path)
    assert location.query.startswith("tab=1&q=a%20b&")  # kept as written
    query = parse_qs(location.query)
    assert query["tab"] == ["1"]
    assert query["q"] == ["a b"]
    assert TICKET.fullmatch(query["__clerk_handshake"][0])
    assert TICKET.fullmatch(query["__clerk_db_jwt"][0])
    name, _, rest = response.headers["set-cookie"].partition("=")
    value, *attributes = rest.split("; ")
    assert name == "__client"
    assert value
    assert set(attributes) == {"Path=/", "HttpOnly", "Secure", "SameSite=None"}
    task = clerk.task(created["agent_task_id"])
    assert task.status == "consumed"
    assert task.consumed_at is not None
    expect_error(http.get(created["url"]), 400, "agent_task_already_used")


def test_the_frontend_needs_no_secret_key(bapi: Backend, clerk: ClerkEmulator) -> None:
    created = bapi.create_ok()
    with new_client() as stranger:
        assert stranger.get(created["url"]).status_code == 307


def test_the_redirect_replaces_stale_handshake_parameters(
    bapi: Backend, http: httpx.Client
) -> None:
    created = bapi.create_ok(redirect_url="http://localhost:3000/x?__clerk_handshake=old&a=1")
    query = parse_qs(urlsplit(http.get(created["url"]).headers["location"]).query)
    assert query["a"] == ["1"]
    assert len(query["__clerk_handshake"]) == 1
    assert query["__clerk_handshake"] != ["old"]


def test_the_default_redirect_lands_on_the_emulator_page(
    bapi: Backend, clerk: ClerkEmulator
) -> None:
    created = bapi.create_ok(redirect_url=clerk.default_redirect_url)
    assert clerk.default_redirect_url.startswith("http://localhost:")
    with new_client(follow_redirects=True) as browser:
        response = browser.get(created["url"])
    assert [r.status_code for r in response.history] == [307]
    assert response.status_code == 200
    assert response.url.host == "localhost"
    assert response.url.path == "/__emulator/signed-in"
    assert response.headers["content-type"].startswith("text/html")
    assert "Signed in" in response.text


def test_a_revoked_task_cannot_be_used(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    created = bapi.create_ok()
    bapi.revoke(created["agent_task_id"])
    expect_error(http.get(created["url"]), 400, "agent_task_revoked")
    assert clerk.task(created["agent_task_id"]).status == "revoked"


def _tampered(ticket: str) -> str:
    head, payload, signature = ticket.split(".")
    return f"{head}.{payload}.{signature[::-1]}"


def _forged(ticket: str) -> str:
    head, payload, signature = ticket.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["tid"] = "agttsk_" + "1" * 27
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


@pytest.mark.parametrize(
    "make_ticket",
    [lambda t: "garbage", lambda t: t + "x", _tampered, _forged, lambda t: t.replace(".", "", 1)],
)
def test_a_bad_ticket_is_invalid(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator, make_ticket: Callable[[str], str]
) -> None:
    created = bapi.create_ok()
    ticket = make_ticket(ticket_of(created["url"]))
    response = http.get(f"{clerk.frontend_api_url}/v1/agents/tasks", params={"ticket": ticket})
    expect_error(response, 400, "ticket_invalid_code")
    assert clerk.task(created["agent_task_id"]).status == "pending"


def test_a_ticket_of_another_instance_is_invalid(http: httpx.Client, clerk: ClerkEmulator) -> None:
    with ClerkEmulator() as other:
        url = Backend(other, http).create_ok()["url"]
    response = http.get(
        f"{clerk.frontend_api_url}/v1/agents/tasks", params={"ticket": ticket_of(url)}
    )
    expect_error(response, 400, "ticket_invalid_code")


def test_a_ticket_of_a_forgotten_task_is_invalid(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    created = bapi.create_ok()
    clerk.reset()
    expect_error(http.get(created["url"]), 400, "ticket_invalid_code")


@pytest.mark.parametrize("query", ["", "?ticket=", "?other=1"])
def test_a_missing_ticket_is_reported(http: httpx.Client, clerk: ClerkEmulator, query: str) -> None:
    response = http.get(f"{clerk.frontend_api_url}/v1/agents/tasks{query}")
    expect_error(response, 400, "missing_query_parameter")


def test_the_ticket_of_a_deleted_user(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    user_id = clerk.add_user(email_address="leaving@example.com")
    created = bapi.create_ok(on_behalf_of={"user_id": user_id})
    clerk.delete_user(user_id)
    expect_error(http.get(created["url"]), 404, "agent_task_subject_not_found")


@pytest.mark.parametrize(
    "url", ["https://evil.example/x", "http://localhost.evil.example/", "http://10.0.0.1:3000/"]
)
def test_a_redirect_outside_the_instance_domains_is_refused_and_the_task_stays_pending(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator, url: str
) -> None:
    created = bapi.create_ok(redirect_url=url)
    expect_error(http.get(created["url"]), 422, "redirect_url_domain_mismatch")
    assert clerk.task(created["agent_task_id"]).status == "pending"
    assert bapi.revoke(created["agent_task_id"]).status_code == 200


@pytest.mark.parametrize(
    "url", ["ftp://localhost/file", "ws://localhost:3000/socket", "file://localhost/etc/hosts"]
)
def test_a_redirect_url_that_is_not_http_is_refused(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator, url: str
) -> None:
    created = bapi.create_ok(redirect_url=url)
    expect_error(http.get(created["url"]), 422, "invalid_redirect_url")
    assert clerk.task(created["agent_task_id"]).status == "pending"


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "http://[::1]:8080/", "https://LOCALHOST/", "http://localhost"]
)
def test_loopback_redirects_are_instance_domains(
    bapi: Backend, http: httpx.Client, url: str
) -> None:
    created = bapi.create_ok(redirect_url=url)
    response = http.get(created["url"])
    assert response.status_code == 307
    assert response.headers["location"].startswith(url)


def test_extra_instance_domains_and_their_subdomains() -> None:
    with ClerkEmulator(domains=["Example.com."]) as clerk, new_client() as http:
        assert clerk.domains == ("example.com",)
        bapi = Backend(clerk, http)
        for url in ("https://example.com/a", "https://app.example.com/b"):
            assert http.get(bapi.create_ok(redirect_url=url)["url"]).status_code == 307
        refused = http.get(bapi.create_ok(redirect_url="https://notexample.com/")["url"])
        expect_error(refused, 422, "redirect_url_domain_mismatch")


@pytest.mark.parametrize("domains", [["https://example.com"], ["example.com:443"], [""]])
def test_domains_must_be_host_names(domains: list[str]) -> None:
    with pytest.raises(ValueError, match="host names"):
        ClerkEmulator(domains=domains)
    with pytest.raises(TypeError, match="not a string"):
        ClerkEmulator(domains="example.com")


def test_the_frontend_routes(http: httpx.Client, clerk: ClerkEmulator) -> None:
    base = clerk.frontend_api_url
    expect_error(http.get(f"{base}/v1/client"), 404, "resource_not_found")
    expect_error(http.post(f"{base}/v1/agents/tasks"), 405, "method_not_allowed")
    page = http.get(f"{base}/__emulator/signed-in?__clerk_handshake=x")
    assert page.status_code == 200
    assert http.head(f"{base}/__emulator/signed-in").status_code == 405


# -- faults ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "too_many_requests"),
        (500, "internal_clerk_error"),
        (502, "internal_clerk_error"),
        (503, "service_unavailable"),
        (504, "gateway_timeout"),
        (404, "resource_not_found"),
    ],
)
def test_an_injected_status_answers_clerks_envelope(
    bapi: Backend, clerk: ClerkEmulator, status: int, code: str
) -> None:
    fault = clerk.inject_fault(method="POST", path="/v1/agents/tasks", status=status)
    response = bapi.create()
    expect_error(response, status, code)
    assert "retry-after" not in response.headers
    assert fault.fired == 1
    assert fault.exhausted
    assert clerk.faults == []
    assert clerk.tasks == []
    assert bapi.create().status_code == 200
    assert [r.fault for r in clerk.requests] == [f"status={status}", None]


@pytest.mark.parametrize(("retry_after", "header"), [(2, "2"), (0.25, "0.25"), (1.5, "1.5")])
def test_an_injected_status_can_carry_retry_after(
    bapi: Backend, clerk: ClerkEmulator, retry_after: float, header: str
) -> None:
    clerk.inject_fault(status=503, retry_after=retry_after)
    response = bapi.create()
    expect_error(response, 503, "service_unavailable")
    assert response.headers["retry-after"] == header


def test_an_injected_fault_can_override_the_code_or_the_body(
    bapi: Backend, clerk: ClerkEmulator
) -> None:
    clerk.inject_fault(status=403, code="quota_exceeded")
    expect_error(bapi.create(), 403, "quota_exceeded")
    clerk.inject_fault(status=502, body="<html><body>Bad gateway</body></html>")
    response = bapi.create()
    assert response.status_code == 502
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert "Bad gateway" in response.text


def test_a_delay_slows_the_answer_down(bapi: Backend, clerk: ClerkEmulator) -> None:
    fault = clerk.inject_fault(path="/v1/agents/tasks", delay=0.2)
    start = time.monotonic()
    response = bapi.create()
    assert time.monotonic() - start >= 0.2
    assert response.status_code == 200
    assert fault.fired == 1
    assert clerk.requests[-1].fault == "delay=0.2"


def test_a_delay_longer_than_the_client_timeout(bapi: Backend, clerk: ClerkEmulator) -> None:
    clerk.inject_fault(delay=0.5)
    with new_client(timeout=0.1) as impatient, pytest.raises(httpx.ReadTimeout):
        Backend(clerk, impatient).create()
    wait_until(lambda: clerk.request_count() == 1)
    assert len(clerk.tasks) == 1  # it was processed after all


def test_a_dropped_connection_answers_nothing(bapi: Backend, clerk: ClerkEmulator) -> None:
    fault = clerk.inject_fault(drop=True)
    with pytest.raises(httpx.RemoteProtocolError):
        bapi.create()
    assert fault.fired == 1
    assert clerk.tasks == []
    assert clerk.requests[-1].status is None
    assert clerk.requests[-1].fault == "drop"
    assert bapi.create().status_code == 200


def test_a_processed_request_whose_answer_is_lost(bapi: Backend, clerk: ClerkEmulator) -> None:
    clerk.inject_fault(method="POST", path="/v1/agents/tasks", drop=True, processed=True)
    with pytest.raises(httpx.RemoteProtocolError):
        bapi.create()
    assert len(clerk.pending_tasks()) == 1
    assert clerk.requests[-1].fault == "drop,processed"


def test_a_processed_request_answered_with_an_error(bapi: Backend, clerk: ClerkEmulator) -> None:
    created = bapi.create_ok()
    clerk.inject_fault(path=r"/v1/agents/tasks/[^/]+/revoke", status=500, processed=True)
    expect_error(bapi.revoke(created["agent_task_id"]), 500, "internal_clerk_error")
    assert clerk.task(created["agent_task_id"]).status == "revoked"
    expect_error(bapi.revoke(created["agent_task_id"]), 400, "agent_task_cannot_be_revoked")


def test_a_fault_on_the_frontend_after_consumption(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    created = bapi.create_ok()
    clerk.inject_fault(api="frontend", drop=True, processed=True)
    with pytest.raises(httpx.RemoteProtocolError):
        http.get(created["url"])
    assert clerk.task(created["agent_task_id"]).status == "consumed"
    expect_error(http.get(created["url"]), 400, "agent_task_already_used")


def test_a_fault_fires_the_given_number_of_times(bapi: Backend, clerk: ClerkEmulator) -> None:
    fault = clerk.inject_fault(status=503, times=2)
    assert [bapi.create().status_code for _ in range(3)] == [503, 503, 200]
    assert fault.fired == 2


def test_a_fault_can_fire_until_cleared(bapi: Backend, clerk: ClerkEmulator) -> None:
    fault = clerk.inject_fault(status=500, times=-1)
    assert [bapi.create().status_code for _ in range(3)] == [500, 500, 500]
    assert not fault.exhausted
    assert clerk.faults == [fault]
    clerk.clear_faults()
    assert bapi.create().status_code == 200
    assert fault.fired == 3


def test_faults_match_api_method_and_path(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    revoke = clerk.inject_fault(method="post", path=r"/v1/agents/tasks/\w+/revoke", status=503)
    frontend = clerk.inject_fault(api="frontend", path="/v1/agents/tasks", status=500)
    getter = clerk.inject_fault(api="backend", method="GET", status=504)
    created = bapi.create_ok()
    assert (revoke.fired, frontend.fired, getter.fired) == (0, 0, 0)
    expect_error(bapi.revoke(created["agent_task_id"]), 503, "service_unavailable")
    expect_error(http.get(created["url"]), 500, "internal_clerk_error")
    expect_error(bapi.request("GET", "/agents/tasks"), 504, "gateway_timeout")
    assert (revoke.fired, frontend.fired, getter.fired) == (1, 1, 1)
    assert clerk.task(created["agent_task_id"]).status == "pending"


def test_the_first_matching_fault_applies(bapi: Backend, clerk: ClerkEmulator) -> None:
    first = clerk.inject_fault(status=503)
    second = clerk.inject_fault(status=504)
    assert [bapi.create().status_code for _ in range(3)] == [503, 504, 200]
    assert (first.fired, second.fired) == (1, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"status": 200},
        {"status": 503, "drop": True},
        {"retry_after": 1},
        {"code": "x"},
        {"status": 503, "retry_after": -1},
        {"delay": -1},
        {"delay": 61},
        {"processed": True, "delay": 1},
        {"status": 500, "times": 0},
        {"status": 500, "times": -2},
        {"api": "dashboard", "status": 500},
    ],
)
def test_an_impossible_fault_is_refused(clerk: ClerkEmulator, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        clerk.inject_fault(**kwargs)
    assert clerk.faults == []


def test_a_fault_repr(clerk: ClerkEmulator) -> None:
    fault = clerk.inject_fault(method="POST", path="/v1/agents/tasks", status=503, delay=0.1)
    assert repr(fault) == "<Fault delay=0.1,status=503 on POST /v1/agents/tasks fired=0>"


# -- rate limit ------------------------------------------------------------


def test_the_rate_limit() -> None:
    with (
        ClerkEmulator(rate_limit=True, rate_limit_requests=3, rate_limit_window=0.5) as clerk,
        new_client() as http,
    ):
        bapi = Backend(clerk, http)
        assert [bapi.create().status_code for _ in range(3)] == [200, 200, 200]
        limited = bapi.create()
        expect_error(limited, 429, "too_many_requests")
        assert limited.headers["retry-after"] == "1"
        assert clerk.requests[-1].fault == "rate_limit"
        assert len(clerk.tasks) == 3
        # Not limited: the JWKS endpoint, and requests that do not authenticate.
        assert bapi.request("GET", "/jwks").status_code == 200
        unauthenticated = bapi.request("POST", "/agents/tasks", headers={}, json={})
        assert unauthenticated.status_code == 401
        time.sleep(0.55)
        assert bapi.create().status_code == 200
        clerk.rate_limit = False
        assert all(bapi.create().status_code == 200 for _ in range(4))
        clerk.rate_limit = True
        assert [bapi.create().status_code for _ in range(4)] == [200, 200, 200, 429]


def test_the_rate_limit_defaults_to_clerks_development_numbers(
    bapi: Backend, clerk: ClerkEmulator
) -> None:
    assert clerk.rate_limit is False
    clerk.rate_limit = True
    try:
        codes = [bapi.request("GET", "/nothing").status_code for _ in range(101)]
    finally:
        clerk.rate_limit = False
    assert codes == [404] * 100 + [429]


@pytest.mark.parametrize(("requests", "window"), [(0, 1.0), (1, 0.0)])
def test_the_rate_limit_numbers_must_make_sense(requests: int, window: float) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        ClerkEmulator(rate_limit_requests=requests, rate_limit_window=window)


# -- request log, state ----------------------------------------------------


def test_the_ticket_appears_in_no_log(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator, capfd: pytest.CaptureFixture[str]
) -> None:
    created = bapi.create_ok()
    ticket = ticket_of(created["url"])
    http.get(created["url"])
    http.get(created["url"])
    http.get(f"{clerk.frontend_api_url}/v1/agents/tasks", params={"ticket": ticket + "x"})
    recorded = clerk.requests
    assert [(r.api, r.method, r.path, r.status) for r in recorded] == [
        ("backend", "POST", "/v1/agents/tasks", 200),
        ("frontend", "GET", "/v1/agents/tasks", 307),
        ("frontend", "GET", "/v1/agents/tasks", 400),
        ("frontend", "GET", "/v1/agents/tasks", 400),
    ]
    everything = repr(recorded) + repr(clerk.tasks) + repr(clerk) + "".join(capfd.readouterr())
    assert ticket not in everything
    assert ticket[-20:] not in everything
    assert clerk.secret_key not in everything


def test_the_request_log(bapi: Backend, http: httpx.Client, clerk: ClerkEmulator) -> None:
    before = time.time()
    created = bapi.create_ok()
    bapi.revoke(created["agent_task_id"])
    http.get(created["url"])
    assert clerk.request_count() == 3
    assert clerk.request_count("backend") == 2
    assert clerk.request_count("frontend", method="get") == 1
    assert clerk.request_count(path="/v1/agents/tasks") == 2
    assert all(before <= r.at <= time.time() for r in clerk.requests)
    assert clerk.requests[1].path == f"/v1/agents/tasks/{created['agent_task_id']}/revoke"


def test_snapshots_are_frozen_copies(bapi: Backend, clerk: ClerkEmulator) -> None:
    created = bapi.create_ok()
    task = clerk.task(created["agent_task_id"])
    with pytest.raises(FrozenInstanceError):
        task.status = "revoked"  # type: ignore[misc]
    clerk.tasks.clear()
    clerk.requests.clear()
    assert len(clerk.tasks) == 1
    assert len(clerk.requests) == 1
    with pytest.raises(KeyError):
        clerk.task("agttsk_unknown")


def test_reset_forgets_tasks_requests_and_faults_but_keeps_users(
    bapi: Backend, clerk: ClerkEmulator
) -> None:
    user_id = clerk.add_user(email_address="kept@example.com")
    try:
        agent_id = bapi.create_ok(agent_name="kept")["agent_id"]
        clerk.inject_fault(status=500)
        clerk.reset()
        assert clerk.tasks == []
        assert clerk.requests == []
        assert clerk.faults == []
        assert clerk.user(user_id).email_address == "kept@example.com"
        assert bapi.create_ok(agent_name="kept")["agent_id"] == agent_id
    finally:
        clerk.delete_user(user_id)


def test_users(clerk: ClerkEmulator) -> None:
    user_id = clerk.add_user("grace@example.com", "+15555550123", "grace")
    try:
        assert USER_ID.fullmatch(user_id)
        user = clerk.user(user_id)
        assert (user.email_address, user.phone_number, user.username) == (
            "grace@example.com",
            "+15555550123",
            "grace",
        )
        assert user in clerk.users
        with pytest.raises(ValueError, match="already belongs"):
            clerk.add_user(email_address="GRACE@example.com")
        with pytest.raises(ValueError, match="already belongs"):
            clerk.add_user(username="Grace")
    finally:
        clerk.delete_user(user_id)
    with pytest.raises(KeyError):
        clerk.delete_user(user_id)
    assert user_id not in [u.user_id for u in clerk.users]


@pytest.mark.parametrize(
    "kwargs",
    [{"email_address": "no-at-sign"}, {"phone_number": "555-0100"}, {"username": " "}],
)
def test_implausible_users_are_refused(clerk: ClerkEmulator, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        clerk.add_user(**kwargs)


def test_a_handler_error_is_answered_with_a_500_and_kept() -> None:
    class Broken(ClerkEmulator):
        def _on_ticket_consumed(self, task: EmulatedTask) -> Any:
            raise RuntimeError("boom")

    with Broken() as clerk, new_client() as http:
        created = Backend(clerk, http).create_ok()
        expect_error(http.get(created["url"]), 500, "internal_clerk_error")
        assert Backend(clerk, http).create().status_code == 200  # still serving
        assert [type(e) for e in clerk.handler_errors] == [RuntimeError]
        with pytest.raises(RuntimeError, match="boom"):
            clerk.check_errors()
        clerk.check_errors()  # reported once


# -- lifecycle -------------------------------------------------------------


def test_start_and_stop_are_idempotent() -> None:
    clerk = ClerkEmulator()
    assert repr(clerk) == "<ClerkEmulator stopped>"
    with pytest.raises(RuntimeError, match="not running"):
        _ = clerk.api_url
    clerk.start()
    try:
        api_url = clerk.api_url
        clerk.start()
        assert clerk.api_url == api_url
        assert clerk.running
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", api_url)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", clerk.frontend_api_url)
        assert clerk.secret_key not in repr(clerk)
        assert api_url in repr(clerk)
    finally:
        clerk.stop()
    clerk.stop()
    assert not clerk.running


def test_it_can_listen_on_ipv6_loopback() -> None:
    clerk = ClerkEmulator(host="::1")
    try:
        clerk.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert re.fullmatch(r"http://\[::1\]:\d+/v1", clerk.api_url)
        with new_client() as http:
            created = Backend(clerk, http).create_ok()
            assert created["url"].startswith("http://[::1]:")
            assert http.get(created["url"]).status_code == 307
    finally:
        clerk.stop()


def test_stop_closes_idle_keep_alive_connections_and_in_flight_delays() -> None:
    clerk = ClerkEmulator()
    clerk.start()
    http = new_client(timeout=10)
    outcome: queue.Queue[BaseException | int] = queue.Queue()

    def slow_request() -> None:
        try:
            outcome.put(Backend(clerk, http).create().status_code)
        except httpx.HTTPError as error:
            outcome.put(error)

    try:
        api_url = clerk.api_url
        assert Backend(clerk, http).create().status_code == 200  # leaves a pooled connection
        fault = clerk.inject_fault(delay=30)
        thread = threading.Thread(target=slow_request)
        thread.start()
        wait_until(lambda: fault.fired == 1)
        start = time.monotonic()
        clerk.stop()
        assert time.monotonic() - start < 3
        thread.join(timeout=5)
        assert not thread.is_alive()
        assert isinstance(outcome.get_nowait(), httpx.TransportError)
        with pytest.raises(httpx.TransportError):
            http.post(f"{api_url}/agents/tasks")
    finally:
        clerk.stop()
        http.close()


def test_the_emulator_imports_neither_pytest_nor_httpx() -> None:
    # The emulator knows nothing of pytest, nor of the client it serves.
    package = ROOT / "pytest_agenttask" / "emulator"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in ("pytest", "httpx", "_pytest"), (path, name)


def test_importing_the_package_imports_no_http_library() -> None:
    code = "import sys, pytest_agenttask\nassert 'httpx' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# -- python -m pytest_agenttask.emulator -------------------------------------


def _read_lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_the_command_runs_until_interrupted(stop_signal: signal.Signals) -> None:
    key = "sk_test_" + "c" * 40
    command = [sys.executable, "-m", "pytest_agenttask.emulator", "--secret-key", key]
    with subprocess.Popen(
        [*command, "--rate-limit"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    ) as process:
        try:
            lines: queue.Queue[str] = queue.Queue()
            reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
            reader.start()
            printed: dict[str, str] = {}
            for _ in range(5):
                name, _, value = lines.get(timeout=20).rstrip("\n").partition("=")
                printed[name] = value
            assert set(printed) == {
                "CLERK_API_URL",
                "CLERK_FRONTEND_API_URL",
                "CLERK_SECRET_KEY",
                "CLERK_USER_ID",
                "CLERK_REDIRECT_URL",
            }
            assert printed["CLERK_SECRET_KEY"] == key
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", printed["CLERK_API_URL"])
            assert printed["CLERK_REDIRECT_URL"].startswith("http://localhost:")
            body = {
                "on_behalf_of": {"user_id": printed["CLERK_USER_ID"]},
                "permissions": "*",
                "agent_name": "cli",
                "task_description": "cli",
                "redirect_url": printed["CLERK_REDIRECT_URL"],
            }
            response = httpx.post(
                f"{printed['CLERK_API_URL']}/agents/tasks",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=5,
            )
            assert response.status_code == 200
            assert response.json()["url"].startswith(printed["CLERK_FRONTEND_API_URL"])
            process.send_signal(stop_signal)
            assert process.wait(timeout=10) == 0
            reader.join(timeout=5)
        finally:
            if process.poll() is None:
                process.kill()


def test_the_command_refuses_a_bad_key() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest_agenttask.emulator", "--secret-key", "hunter2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "sk_test_" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


# -- Clerk's OpenAPI documents ------------------------------------------------


def _openapi_document(name: str) -> str:
    # An unmodified copy of Clerk's published documents (MIT) lives beside the tests.
    return (Path(__file__).parent / "clerk-openapi" / name).read_text(encoding="utf-8")


def _schema_facts(lines: list[str], header: int, indent: int) -> tuple[set[str], set[str], bool]:
    """Properties, required names and ``additionalProperties: false`` of the schema
    whose keys sit at ``indent`` below line ``header``. A reader for these simple
    blocks only: PyYAML is not a dependency."""
    properties: set[str] = set()
    required: set[str] = set()
    closed = False
    section = ""
    for line in lines[header + 1 :]:
        stripped = line.strip()
        if not stripped:
            continue
        depth = len(line) - len(line.lstrip(" "))
        if depth < indent:
            break
        if depth == indent:
            section = stripped.partition(":")[0]
            closed = closed or stripped == "additionalProperties: false"
        elif depth == indent + 2 and section == "properties" and stripped.endswith(":"):
            properties.add(stripped[:-1])
        elif depth == indent + 2 and section == "required" and stripped.startswith("- "):
            required.add(stripped[2:].strip("'\""))
    assert properties, f"no properties found below line {header + 1}"
    return properties, required, closed


def test_schemas_match_the_openapi_document() -> None:
    lines = _openapi_document("bapi-2026-05-12.yml").splitlines()
    schemas = lines.index("  schemas:", lines.index("components:"))

    def component(name: str) -> tuple[set[str], set[str], bool]:
        return _schema_facts(lines, lines.index(f"    {name}:", schemas), 6)

    assert component("AgentTask") == (AGENT_TASK_PROPERTIES, AGENT_TASK_REQUIRED, True)
    assert component("ClerkErrors")[:2] == (CLERK_ERRORS_PROPERTIES, CLERK_ERRORS_REQUIRED)
    assert component("ClerkError")[:2] == (CLERK_ERROR_PROPERTIES, CLERK_ERROR_REQUIRED)
    operation = lines.index("  /agents/tasks:")
    body = lines.index("            schema:", operation)
    assert _schema_facts(lines, body, 14) == (CREATE_PROPERTIES, CREATE_REQUIRED, True)


def test_the_frontend_operation_is_in_the_openapi_document() -> None:
    text = _openapi_document("fapi-2026-05-12.yml")
    block = text[text.index("  /v1/agents/tasks:") :][:3000]
    assert "name: ticket" in block
    assert "'307':" in block
