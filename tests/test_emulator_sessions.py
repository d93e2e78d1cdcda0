"""Sessions in the Clerk emulator, over real loopback sockets: the handshake a task
URL redirects with, the session it opens, RS256 session tokens, the Backend API's
sessions, users and JWKS endpoints, and the official SDK as verifier and client."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from pytest_agenttask.emulator import ClerkEmulator, EmulatedSession
from tests.test_emulator import (
    ROOT,
    Backend,
    _openapi_document,
    _schema_facts,
    expect_error,
    new_client,
)

jwt = pytest.importorskip("jwt")
serialization = pytest.importorskip("cryptography.hazmat.primitives.serialization")
clerk_backend_api = pytest.importorskip("clerk_backend_api")
models = clerk_backend_api.models
utils = clerk_backend_api.utils
security = pytest.importorskip("clerk_backend_api.security")
security_types = pytest.importorskip("clerk_backend_api.security.types")

BASE62_27 = "[0-9A-Za-z]{27}"
SESSION_ID = re.compile(f"sess_{BASE62_27}")
CLIENT_ID = re.compile(f"client_{BASE62_27}")
KID = re.compile(f"ins_{BASE62_27}")
IDN = re.compile(f"idn_{BASE62_27}")
APP = "http://localhost:3000"
APP_URL = f"{APP}/after?tab=1"
NO_RETRIES = utils.RetryConfig("none", utils.BackoffStrategy(1, 1, 1.0, 1), False)
CATEGORY = "cl_B7d4PD111AAA"
# Clerk's Session object carries no token; nothing here may log one.
TOKEN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


# -- helpers ---------------------------------------------------------------


@dataclass
class SignIn:
    """What visiting a task URL produced."""

    task: dict[str, Any]
    fapi_cookies: list[str]  # the 307's own Set-Cookie headers, for the FAPI host
    location: str
    query: dict[str, list[str]]
    cookies: dict[str, tuple[str, set[str]]]  # the handshake's Set-Cookie lines
    handshake: dict[str, Any]  # the handshake JWT's verified payload
    session: EmulatedSession

    @property
    def session_token(self) -> str:
        return self.cookies["__session"][0]


def parse_set_cookie(line: str) -> tuple[str, str, set[str]]:
    pair, *attributes = line.split("; ")
    name, _, value = pair.partition("=")
    return name, value, set(attributes)


def decode(token: str, key: str, **kwargs: Any) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], **kwargs)
    return claims


def sign_in(bapi: Backend, http: httpx.Client, **overrides: Any) -> SignIn:
    overrides.setdefault("redirect_url", APP_URL)
    task = bapi.create_ok(**overrides)
    response = http.get(task["url"])
    assert response.status_code == 307, response.text
    location = response.headers["location"]
    query = parse_qs(urlsplit(location).query)
    handshake = decode(query["__clerk_handshake"][0], bapi.clerk.jwt_key)
    cookies = {}
    for line in handshake["handshake"]:
        name, value, attributes = parse_set_cookie(line)
        cookies[name] = (value, attributes)
    (session,) = [s for s in bapi.clerk.sessions if s.agent_task_id == task["agent_task_id"]]
    fapi_cookies = response.headers.get_list("set-cookie")
    return SignIn(task, fapi_cookies, location, query, cookies, handshake, session)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def wait_past(unix_time: float, timeout: float = 5.0) -> None:
    """Sleep until the wall clock is past ``unix_time`` (a JWT ``exp``)."""
    assert unix_time - time.time() < timeout
    while (remaining := unix_time - time.time()) >= 0:
        time.sleep(remaining + 0.02)


def component(name: str) -> tuple[set[str], set[str], bool]:
    lines = _openapi_document("bapi-2026-05-12.yml").splitlines()
    schemas = lines.index("  schemas:", lines.index("components:"))
    return _schema_facts(lines, lines.index(f"    {name}:", schemas), 6)


def assert_schema(body: dict[str, Any], name: str) -> None:
    properties, required, closed = component(name)
    assert required <= body.keys(), f"{name} misses {required - body.keys()}"
    assert not closed or body.keys() <= properties, f"{name}: {body.keys() - properties}"


def requestish(**headers: str) -> httpx.Request:
    return httpx.Request("GET", f"{APP}/api/me", headers=headers)


# -- fixtures --------------------------------------------------------------


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with new_client() as client:
        yield client


@pytest.fixture
def bapi(clerk: ClerkEmulator, http: httpx.Client) -> Backend:
    return Backend(clerk, http)


@pytest.fixture
def sdk(clerk: ClerkEmulator, http: httpx.Client) -> Any:
    return clerk_backend_api.Clerk(
        bearer_auth=clerk.secret_key,
        server_url=clerk.api_url,
        client=http,
        timeout_ms=5000,
        retry_config=NO_RETRIES,
    )


# -- the redirect and its handshake ----------------------------------------


def test_visiting_a_task_url_redirects_with_a_signed_handshake(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    before = int(time.time())
    result = sign_in(bapi, http)
    assert result.location.startswith(f"{APP_URL}&__clerk_handshake=")
    assert result.query["tab"] == ["1"]
    handshake = result.query["__clerk_handshake"][0]
    header = jwt.get_unverified_header(handshake)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": header["kid"], "cat": CATEGORY}
    assert KID.fullmatch(header["kid"])
    payload = result.handshake
    assert set(payload) == {"handshake", "iat", "exp"}
    assert before <= payload["iat"] <= time.time()
    assert 0 < payload["exp"] - payload["iat"] <= 60
    # The JWKS verifies it as well as the PEM key does.
    jwks = bapi.request("GET", "/jwks").json()
    (jwk,) = jwks["keys"]
    assert jwk["kid"] == header["kid"]
    assert decode(handshake, jwt.PyJWK(jwk).key) == payload


def test_the_handshake_carries_host_only_cookies(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    result = sign_in(bapi, http)
    lines = result.handshake["handshake"]
    assert [parse_set_cookie(line)[0] for line in lines] == [
        "__session",
        "__client_uat",
        "__clerk_db_jwt",
    ]
    for _name, (value, attributes) in result.cookies.items():
        assert value
        assert attributes == {"Path=/", "SameSite=Lax"}  # no Domain, not HttpOnly
    assert abs(int(result.cookies["__client_uat"][0]) - time.time()) < 5
    assert result.cookies["__clerk_db_jwt"][0] == result.query["__clerk_db_jwt"][0]
    # __client stays on the Frontend API host, set by the 307 itself.
    assert [parse_set_cookie(line)[0] for line in result.fapi_cookies] == ["__client"]


def test_the_visit_opens_an_agent_session(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    before = time.time()
    result = sign_in(bapi, http, session_max_duration_in_seconds=600)
    task = result.task
    session = result.session
    assert SESSION_ID.fullmatch(session.session_id)
    assert CLIENT_ID.fullmatch(session.client_id)
    assert session.user_id == clerk.default_user_id
    assert session.status == "active"
    assert session.actor == {
        "type": "agent",
        "sub": task["agent_id"],
        "task_id": task["agent_task_id"],
    }
    assert session.agent_task_id == task["agent_task_id"]
    assert before <= session.created_at <= time.time()
    assert session.expire_at == pytest.approx(session.created_at + 600)
    assert session.authorized_party == APP
    assert clerk.session(session.session_id) == session
    assert clerk.active_sessions() == [session]
    assert clerk.task(task["agent_task_id"]).status == "consumed"


def test_the_session_token_claims(bapi: Backend, http: httpx.Client, clerk: ClerkEmulator) -> None:
    result = sign_in(bapi, http)
    token = result.session_token
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": header["kid"], "cat": CATEGORY}
    claims = decode(token, clerk.jwt_key)
    session = result.session
    assert set(claims) == {
        "act",
        "azp",
        "exp",
        "fva",
        "iat",
        "iss",
        "jti",
        "nbf",
        "sid",
        "sts",
        "sub",
        "v",
    }
    assert claims["sub"] == clerk.default_user_id
    assert claims["sid"] == session.session_id
    assert claims["iss"] == clerk.frontend_api_url
    assert claims["azp"] == APP  # the redirect URL's origin
    assert claims["act"] == session.actor
    assert (claims["v"], claims["sts"], claims["fva"]) == (2, "active", [0, -1])
    assert claims["exp"] - claims["iat"] in (60, 61)  # at least 60 s, rounded up
    assert claims["nbf"] == claims["iat"] - 5


def test_jwt_key_is_a_pem_public_key_per_instance(clerk: ClerkEmulator) -> None:
    key = clerk.jwt_key
    assert key.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert key.rstrip().endswith("-----END PUBLIC KEY-----")
    assert clerk.jwt_key == key
    clerk.reset()
    assert clerk.jwt_key == key  # the key outlives reset()
    with ClerkEmulator() as other:
        assert other.jwt_key != key


def test_a_token_of_another_instance_does_not_verify(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    with ClerkEmulator() as other, new_client() as other_http:
        token = sign_in(Backend(other, other_http), other_http).session_token
    with pytest.raises(jwt.InvalidSignatureError):
        decode(token, clerk.jwt_key)


# -- token lifetime ----------------------------------------------------------


def test_the_token_lifetime_is_configurable(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    assert clerk.session_token_lifetime == 60.0
    clerk.session_token_lifetime = 5
    assert clerk.session_token_lifetime == 5.0
    result = sign_in(bapi, http)
    claims = decode(result.session_token, clerk.jwt_key)
    assert claims["exp"] - claims["iat"] in (5, 6)
    minted = bapi.request("POST", f"/sessions/{result.session.session_id}/tokens").json()
    claims = decode(minted["jwt"], clerk.jwt_key)
    assert claims["exp"] - claims["iat"] in (5, 6)
    with ClerkEmulator(session_token_lifetime=2.5) as short:
        assert short.session_token_lifetime == 2.5


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("60", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_an_impossible_token_lifetime_is_refused(value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="session_token_lifetime"):
        ClerkEmulator(session_token_lifetime=value)
    clerk = ClerkEmulator()
    with pytest.raises(error, match="session_token_lifetime"):
        clerk.session_token_lifetime = value
    assert clerk.session_token_lifetime == 60.0


def test_a_short_lived_token_expires(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    clerk.session_token_lifetime = 1
    claims = decode(sign_in(bapi, http).session_token, clerk.jwt_key)
    assert claims["exp"] - claims["iat"] in (1, 2)
    token = bapi.request("POST", f"/sessions/{claims['sid']}/tokens").json()["jwt"]
    wait_past(decode(token, clerk.jwt_key)["exp"])
    with pytest.raises(jwt.ExpiredSignatureError):
        decode(token, clerk.jwt_key)
    # The session itself lives on: a fresh token verifies.
    fresh = bapi.request("POST", f"/sessions/{claims['sid']}/tokens").json()["jwt"]
    assert decode(fresh, clerk.jwt_key)["sid"] == claims["sid"]


# -- GET /v1/sessions and /v1/sessions/{id} ---------------------------------


def test_sessions_render_every_required_field_in_milliseconds(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    session = sign_in(bapi, http, session_max_duration_in_seconds=300).session
    response = bapi.request("GET", f"/sessions/{session.session_id}")
    assert response.status_code == 200
    body = response.json()
    assert_schema(body, "Session")
    assert body["object"] == "session"
    assert body["id"] == session.session_id
    assert (body["user_id"], body["client_id"]) == (session.user_id, session.client_id)
    assert body["status"] == "active"
    assert body["actor"] == session.actor
    assert body["created_at"] == int(session.created_at * 1000)
    assert abs(body["expire_at"] - body["created_at"] - 300_000) <= 1
    assert body["abandon_at"] == body["expire_at"]
    assert body["updated_at"] == body["last_active_at"] == body["created_at"]
    assert abs(body["created_at"] / 1000 - time.time()) < 10  # milliseconds, not seconds


def test_an_unknown_session_is_not_found(bapi: Backend) -> None:
    for method, path in [
        ("GET", "/sessions/sess_unknown"),
        ("POST", "/sessions/sess_unknown/revoke"),
        ("POST", "/sessions/sess_unknown/tokens"),
    ]:
        error = expect_error(bapi.request(method, path), 404, "resource_not_found")
        assert "sess_unknown" in error["long_message"]


def test_listing_sessions_newest_first_with_filters_and_pages(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    other_user = clerk.add_user(email_address="other@example.com")
    try:
        mine = [sign_in(bapi, http).session for _ in range(3)]
        theirs = sign_in(bapi, http, on_behalf_of={"user_id": other_user}).session

        def ids(**params: Any) -> list[str]:
            response = bapi.request("GET", "/sessions", params=params)
            assert response.status_code == 200, response.text
            return [s["id"] for s in response.json()]

        newest_first = [s.session_id for s in reversed(mine)]
        assert ids(user_id=clerk.default_user_id) == newest_first
        assert ids(user_id=other_user) == [theirs.session_id]
        assert ids(client_id=mine[1].client_id) == [mine[1].session_id]
        assert ids(user_id=clerk.default_user_id, client_id=theirs.client_id) == []
        assert ids(user_id=clerk.default_user_id, limit=2) == newest_first[:2]
        assert ids(user_id=clerk.default_user_id, limit=1, offset=1) == newest_first[1:2]
        assert ids(user_id=clerk.default_user_id, offset=5) == []
        assert ids(user_id="user_nobody") == []
        bapi.request("POST", f"/sessions/{mine[0].session_id}/revoke")
        assert ids(user_id=clerk.default_user_id, status="revoked") == [mine[0].session_id]
        assert ids(user_id=clerk.default_user_id, status="active") == newest_first[:2]
        paged = bapi.request(
            "GET",
            "/sessions",
            params={"user_id": clerk.default_user_id, "paginated": "true", "limit": 1},
        ).json()
        assert paged.keys() == {"data", "total_count"}
        assert paged["total_count"] == 3
        assert [s["id"] for s in paged["data"]] == newest_first[:1]
        for body in paged["data"]:
            assert_schema(body, "Session")
    finally:
        clerk.delete_user(other_user)


def test_listing_sessions_defaults_to_ten(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    for _ in range(11):
        sign_in(bapi, http)
    response = bapi.request("GET", "/sessions", params={"user_id": clerk.default_user_id})
    assert len(response.json()) == 10


@pytest.mark.parametrize(
    ("params", "code", "param"),
    [
        ({}, "form_param_missing", "user_id"),
        ({"status": "active"}, "form_param_missing", "user_id"),
        ({"user_id": "u", "limit": "0"}, "form_param_value_invalid", "limit"),
        ({"user_id": "u", "limit": "501"}, "form_param_value_invalid", "limit"),
        ({"user_id": "u", "limit": "ten"}, "form_param_type_invalid", "limit"),
        ({"user_id": "u", "offset": "-1"}, "form_param_value_invalid", "offset"),
        ({"user_id": "u", "status": "gone"}, "form_param_value_invalid", "status"),
        ({"user_id": "u", "status": "pending"}, "form_param_value_invalid", "status"),
        ({"user_id": "u", "paginated": "maybe"}, "form_param_type_invalid", "paginated"),
    ],
)
def test_listing_sessions_validates_its_parameters(
    bapi: Backend, params: dict[str, str], code: str, param: str
) -> None:
    expect_error(bapi.request("GET", "/sessions", params=params), 422, code, param)


# -- POST /v1/sessions/{id}/revoke ------------------------------------------


def test_revoking_a_session(bapi: Backend, http: httpx.Client, clerk: ClerkEmulator) -> None:
    session = sign_in(bapi, http).session
    response = bapi.request("POST", f"/sessions/{session.session_id}/revoke")
    assert response.status_code == 200
    body = response.json()
    assert_schema(body, "Session")
    assert body["id"] == session.session_id
    assert body["status"] == "revoked"
    assert body["updated_at"] >= body["created_at"]
    revoked = clerk.session(session.session_id)
    assert revoked.status == "revoked"
    assert revoked.revoked_at is not None
    assert clerk.active_sessions() == []
    error = expect_error(
        bapi.request("POST", f"/sessions/{session.session_id}/revoke"),
        400,
        "invalid_action_for_session",
    )
    assert error["meta"] == {"session_status": "revoked"}


# -- POST /v1/sessions/{id}/tokens -------------------------------------------


def test_minting_a_token(bapi: Backend, http: httpx.Client, clerk: ClerkEmulator) -> None:
    session = sign_in(bapi, http).session
    response = bapi.request("POST", f"/sessions/{session.session_id}/tokens")
    assert response.status_code == 200
    body = response.json()
    assert body.keys() == {"object", "jwt"}
    assert body["object"] == "token"
    claims = decode(body["jwt"], clerk.jwt_key)
    assert (claims["sub"], claims["sid"]) == (clerk.default_user_id, session.session_id)
    assert claims["act"] == session.actor
    assert claims["azp"] == APP  # the same authorized party as the handshake's token
    assert claims["exp"] - claims["iat"] in (60, 61)


@pytest.mark.parametrize(("seconds", "lifetime"), [(30, 30), (3600, 3600), (None, 60)])
def test_minting_a_token_with_a_lifetime(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator, seconds: int | None, lifetime: int
) -> None:
    session = sign_in(bapi, http).session
    path = f"/sessions/{session.session_id}/tokens"
    response = bapi.request("POST", path, json={"expires_in_seconds": seconds})
    claims = decode(response.json()["jwt"], clerk.jwt_key)
    assert claims["exp"] - claims["iat"] in (lifetime, lifetime + 1)


@pytest.mark.parametrize(
    ("seconds", "code"),
    [
        (29, "form_param_value_invalid"),
        (315360001, "form_param_value_invalid"),
        ("60", "form_param_type_invalid"),
        (60.5, "form_param_type_invalid"),
        (True, "form_param_type_invalid"),
    ],
)
def test_a_bad_token_lifetime_is_refused(
    bapi: Backend, http: httpx.Client, seconds: Any, code: str
) -> None:
    session = sign_in(bapi, http).session
    path = f"/sessions/{session.session_id}/tokens"
    response = bapi.request("POST", path, json={"expires_in_seconds": seconds})
    expect_error(response, 422, code, "expires_in_seconds")


def test_a_revoked_session_mints_no_token(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    session = sign_in(bapi, http).session
    bapi.request("POST", f"/sessions/{session.session_id}/revoke")
    response = bapi.request("POST", f"/sessions/{session.session_id}/tokens")
    error = expect_error(response, 404, "resource_not_found")
    assert error["long_message"] == f"No active session was found with id {session.session_id}"


def test_a_session_expires_after_its_max_duration(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    session = sign_in(bapi, http, session_max_duration_in_seconds=1).session
    assert session.status == "active"
    wait_until(lambda: clerk.session(session.session_id).status == "expired")
    assert clerk.active_sessions() == []
    body = bapi.request("GET", f"/sessions/{session.session_id}").json()
    assert body["status"] == "expired"
    params = {"user_id": clerk.default_user_id, "status": "expired"}
    listed = bapi.request("GET", "/sessions", params=params).json()
    assert [s["id"] for s in listed] == [session.session_id]
    path = f"/sessions/{session.session_id}"
    expect_error(bapi.request("POST", f"{path}/tokens"), 404, "resource_not_found")
    expect_error(bapi.request("POST", f"{path}/revoke"), 400, "invalid_action_for_session")


def test_deleting_the_user_revokes_its_sessions(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    user_id = clerk.add_user(email_address="short-lived@example.com")
    session = sign_in(bapi, http, on_behalf_of={"user_id": user_id}).session
    clerk.delete_user(user_id)
    assert clerk.session(session.session_id).status == "revoked"
    response = bapi.request("POST", f"/sessions/{session.session_id}/tokens")
    expect_error(response, 404, "resource_not_found")


# -- GET /v1/users -------------------------------------------------------------


@pytest.fixture
def ada(clerk: ClerkEmulator) -> Iterator[str]:
    user_id = clerk.add_user(
        email_address="ada@example.com", phone_number="+15555550100", username="ada"
    )
    yield user_id
    clerk.delete_user(user_id)


def test_finding_a_user_by_identifier(bapi: Backend, clerk: ClerkEmulator, ada: str) -> None:
    def ids(params: Any) -> list[str]:
        response = bapi.request("GET", "/users", params=params)
        assert response.status_code == 200, response.text
        return [user["id"] for user in response.json()]

    assert ids({"email_address": "ADA@example.com"}) == [ada]
    assert ids({"phone_number": "+15555550100"}) == [ada]
    assert ids({"username": "Ada"}) == [ada]
    assert ids({"user_id": ada}) == [ada]
    assert ids({"email_address": "nobody@example.com"}) == []
    # Several values of one filter: any; several filters: all.
    both = [("email_address", "ada@example.com"), ("email_address", "agent@example.com")]
    assert ids(both) == [ada, clerk.default_user_id]  # newest first
    assert ids([*both, ("username", "ada")]) == [ada]
    assert ids([*both, ("user_id", f"-{ada}")]) == [clerk.default_user_id]
    assert ids({}) == [ada, clerk.default_user_id]
    assert ids({"limit": 1}) == [ada]
    assert ids({"limit": 1, "offset": 1}) == [clerk.default_user_id]
    expect_error(
        bapi.request("GET", "/users", params={"limit": 0}), 422, "form_param_value_invalid"
    )


def test_a_user_has_every_required_field(bapi: Backend, clerk: ClerkEmulator, ada: str) -> None:
    (user,) = bapi.request("GET", "/users", params={"user_id": ada}).json()
    assert_schema(user, "User")
    assert user["object"] == "user"
    assert user["username"] == "ada"
    (email,) = user["email_addresses"]
    assert_schema(email, "EmailAddress")
    assert IDN.fullmatch(email["id"])
    assert user["primary_email_address_id"] == email["id"]
    assert email["email_address"] == "ada@example.com"
    assert email["verification"]["status"] == "verified"
    (phone,) = user["phone_numbers"]
    assert_schema(phone, "PhoneNumber")
    assert user["primary_phone_number_id"] == phone["id"] != email["id"]
    assert user["created_at"] == int(clerk.user(ada).created_at * 1000)
    again = bapi.request("GET", "/users", params={"user_id": ada}).json()
    assert again == [user]  # identifier ids are stable


def test_an_unverified_identifier_shows_as_unverified(bapi: Backend, clerk: ClerkEmulator) -> None:
    user_id = clerk.add_user(email_address="new@example.com", verified=False)
    try:
        (user,) = bapi.request("GET", "/users", params={"user_id": user_id}).json()
        assert user["email_addresses"][0]["verification"]["status"] == "unverified"
        assert user["phone_numbers"] == []
        assert user["primary_phone_number_id"] is None
    finally:
        clerk.delete_user(user_id)


# -- GET /v1/jwks ---------------------------------------------------------------


def test_the_jwks(bapi: Backend, clerk: ClerkEmulator) -> None:
    response = bapi.request("GET", "/jwks")
    assert response.status_code == 200
    body = response.json()
    assert body.keys() == {"keys"}
    (key,) = body["keys"]
    assert_schema(key, "JWKS.rsa.PublicKey")
    assert key.keys() == {"use", "kty", "kid", "alg", "n", "e"}
    assert (key["use"], key["kty"], key["alg"], key["e"]) == ("sig", "RSA", "RS256", "AQAB")
    assert KID.fullmatch(key["kid"])
    pem = jwt.PyJWK(key).key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    assert pem.decode() == clerk.jwt_key
    expect_error(bapi.request("GET", "/jwks", headers={}), 401, "authentication_invalid")


def test_the_jwks_is_not_rate_limited_but_sessions_are(http: httpx.Client) -> None:
    with ClerkEmulator(rate_limit=True, rate_limit_requests=2, rate_limit_window=30) as limited:
        other = Backend(limited, http)
        assert [other.request("GET", "/jwks").status_code for _ in range(5)] == [200] * 5
        params = {"user_id": limited.default_user_id}
        codes = [other.request("GET", "/sessions", params=params).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        assert other.request("GET", "/users").status_code == 429
        assert other.request("GET", "/jwks").status_code == 200
        assert other.request("POST", "/sessions/sess_x/tokens").status_code == 429


# -- request log, faults, reset ---------------------------------------------------


def test_no_token_reaches_the_log_or_a_repr(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator, capfd: pytest.CaptureFixture[str]
) -> None:
    result = sign_in(bapi, http)
    sid = result.session.session_id
    minted = bapi.request("POST", f"/sessions/{sid}/tokens").json()["jwt"]
    bapi.request("GET", "/sessions", params={"user_id": clerk.default_user_id, "limit": 5})
    bapi.request("GET", "/users", params={"email_address": "agent@example.com"})
    bapi.request("GET", "/jwks")
    bapi.request("POST", f"/sessions/{sid}/revoke")
    assert [(r.api, r.method, r.path, r.status) for r in clerk.requests] == [
        ("backend", "POST", "/v1/agents/tasks", 200),
        ("frontend", "GET", "/v1/agents/tasks", 307),
        ("backend", "POST", f"/v1/sessions/{sid}/tokens", 200),
        ("backend", "GET", "/v1/sessions", 200),
        ("backend", "GET", "/v1/users", 200),
        ("backend", "GET", "/v1/jwks", 200),
        ("backend", "POST", f"/v1/sessions/{sid}/revoke", 200),
    ]
    everything = "".join(
        [
            repr(clerk.requests),
            repr(clerk.sessions),
            repr(clerk.tasks),
            repr(clerk),
            *capfd.readouterr(),
        ]
    )
    assert not TOKEN.search(everything)
    for secret in (result.session_token, minted, result.query["__clerk_handshake"][0]):
        assert secret[-20:] not in everything


def test_faults_apply_to_the_new_routes(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    session = sign_in(bapi, http).session
    tokens = clerk.inject_fault(path=r"/v1/sessions/[^/]+/tokens", status=503)
    jwks = clerk.inject_fault(path="/v1/jwks", status=500)
    expect_error(
        bapi.request("POST", f"/sessions/{session.session_id}/tokens"), 503, "service_unavailable"
    )
    expect_error(bapi.request("GET", "/jwks"), 500, "internal_clerk_error")
    assert (tokens.fired, jwks.fired) == (1, 1)
    clerk.inject_fault(path=r"/v1/sessions/[^/]+/revoke", status=500, processed=True)
    bapi.request("POST", f"/sessions/{session.session_id}/revoke")
    assert clerk.session(session.session_id).status == "revoked"  # processed, answer lost


def test_reset_forgets_sessions(bapi: Backend, http: httpx.Client, clerk: ClerkEmulator) -> None:
    session = sign_in(bapi, http).session
    clerk.reset()
    assert clerk.sessions == []
    with pytest.raises(KeyError):
        clerk.session(session.session_id)
    expect_error(bapi.request("GET", f"/sessions/{session.session_id}"), 404, "resource_not_found")


def test_session_snapshots_are_copies(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    session = sign_in(bapi, http).session
    assert session.actor is not None
    session.actor["type"] = "user"
    assert clerk.session(session.session_id).actor == {**session.actor, "type": "agent"}
    assert hash(session) == hash(clerk.session(session.session_id))


# -- the optional extra -----------------------------------------------------------

_WITHOUT_EXTRA = """
import sys
sys.modules["jwt"] = None
sys.modules["cryptography"] = None
import pytest_agenttask, pytest_agenttask.plugin, pytest_agenttask.emulator
from pytest_agenttask.emulator import ClerkEmulator
clerk = ClerkEmulator()
try:
    clerk.start()
except ImportError as error:
    assert "pip install 'pytest-agenttask[emulator]'" in str(error), error
    assert not clerk.running
else:
    raise AssertionError("started without cryptography and PyJWT")
from pytest_agenttask.emulator.__main__ import main
assert main([]) == 1
"""


def test_without_the_extra_start_says_what_to_install() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRA],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'pytest-agenttask[emulator]'" in result.stderr


# -- the official SDK as the app's verifier ----------------------------------------


def test_the_sdk_authenticates_the_handshake_session_token(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    result = sign_in(bapi, http)
    token = result.session_token
    options = security_types.AuthenticateRequestOptions(
        jwt_key=clerk.jwt_key, authorized_parties=[APP]
    )
    for request in (
        requestish(Authorization=f"Bearer {token}"),
        requestish(cookie=f"__client_uat=1; __session={token}"),
    ):
        state = security.authenticate_request(request, options)
        assert state.is_signed_in, state.reason
        assert state.payload["sub"] == clerk.default_user_id
        assert state.payload["sid"] == result.session.session_id
        assert state.payload["act"] == result.session.actor
        auth = state.to_auth()
        assert (auth.sub, auth.sid, auth.azp) == (
            clerk.default_user_id,
            result.session.session_id,
            APP,
        )
    elsewhere = security_types.AuthenticateRequestOptions(
        jwt_key=clerk.jwt_key, authorized_parties=["https://elsewhere.example"]
    )
    refused = security.authenticate_request(requestish(Authorization=f"Bearer {token}"), elsewhere)
    assert not refused.is_signed_in
    assert (
        refused.reason
        == security_types.TokenVerificationErrorReason.TOKEN_INVALID_AUTHORIZED_PARTIES
    )


def test_the_sdk_verifies_a_minted_token_against_the_emulators_jwks(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    session = sign_in(bapi, http).session
    token = bapi.request("POST", f"/sessions/{session.session_id}/tokens").json()["jwt"]
    options = security_types.VerifyTokenOptions(
        api_url=clerk.api_url.removesuffix("/v1"), api_version="v1", secret_key=clerk.secret_key
    )
    payload = security.verify_token(token, options)
    assert (payload["sub"], payload["sid"]) == (clerk.default_user_id, session.session_id)
    assert clerk.request_count("backend", method="GET", path="/v1/jwks") == 1


def test_the_sdk_refuses_an_expired_token(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator
) -> None:
    clerk.session_token_lifetime = 1
    token = sign_in(bapi, http).session_token
    request = requestish(cookie=f"__session={token}")
    options = security_types.AuthenticateRequestOptions(jwt_key=clerk.jwt_key, clock_skew_in_ms=0)
    assert security.authenticate_request(request, options).is_signed_in
    wait_past(decode(token, clerk.jwt_key)["exp"])
    state = security.authenticate_request(request, options)
    assert not state.is_signed_in
    assert state.reason == security_types.TokenVerificationErrorReason.TOKEN_EXPIRED


def test_the_sdk_mints_no_token_for_a_revoked_session(
    bapi: Backend, http: httpx.Client, sdk: Any
) -> None:
    session = sign_in(bapi, http).session
    sdk.sessions.revoke(session_id=session.session_id)
    with pytest.raises(models.ClerkErrors) as info:
        sdk.sessions.create_token(session_id=session.session_id)
    assert info.value.status_code == 404
    assert info.value.data.errors[0].code == "resource_not_found"


# -- the official SDK as a client ---------------------------------------------------


def test_the_sdk_parses_sessions(
    bapi: Backend, http: httpx.Client, clerk: ClerkEmulator, sdk: Any
) -> None:
    older = sign_in(bapi, http).session
    newer = sign_in(bapi, http).session
    listed = sdk.sessions.list(user_id=clerk.default_user_id, status=models.QueryParamStatus.ACTIVE)
    assert [s.id for s in listed] == [newer.session_id, older.session_id]
    for session in listed:
        assert isinstance(session, models.Session)
        assert session.object == models.SessionObject.SESSION
        assert session.status == models.Status.ACTIVE
        assert isinstance(session.actor, models.Actor)
    fetched = sdk.sessions.get(session_id=older.session_id)
    assert fetched.client_id == older.client_id
    assert fetched.expire_at == int(older.expire_at * 1000)
    revoked = sdk.sessions.revoke(session_id=older.session_id)
    assert revoked.status == models.Status.REVOKED
    assert [s.id for s in sdk.sessions.list(client_id=newer.client_id)] == [newer.session_id]
    minted = sdk.sessions.create_token(session_id=newer.session_id, expires_in_seconds=120)
    assert minted.object == models.CreateSessionTokenObject.TOKEN
    claims = decode(minted.jwt, clerk.jwt_key)
    assert claims["exp"] - claims["iat"] in (120, 121)
    with pytest.raises(models.ClerkErrors) as info:
        sdk.sessions.get(session_id="sess_unknown")
    assert info.value.status_code == 404


def test_the_sdk_parses_the_jwks(sdk: Any, clerk: ClerkEmulator) -> None:
    jwks = sdk.jwks.get_jwks()
    assert isinstance(jwks, models.Jwks)
    (key,) = jwks.keys
    assert (key.kty, key.alg, key.use) == ("RSA", "RS256", "sig")
    assert KID.fullmatch(key.kid)


# users.list reads every field of its request model, the deprecated
# `last_active_at_since` among them: the SDK warns about its own field.
@pytest.mark.filterwarnings("ignore:warning:DeprecationWarning:clerk_backend_api")
def test_the_sdk_finds_a_user_by_email(sdk: Any, clerk: ClerkEmulator, ada: str) -> None:
    (user,) = sdk.users.list(request={"email_address": ["ada@example.com"]})
    assert isinstance(user, models.User)
    assert user.id == ada
    assert user.username == "ada"
    assert user.email_addresses[0].email_address == "ada@example.com"
    assert user.email_addresses[0].verification.status == "verified"
    assert user.phone_numbers[0].phone_number == "+15555550100"
    (by_phone,) = sdk.users.list(request={"phone_number": ["+15555550100"]})
    assert by_phone.id == ada
    assert sdk.users.list(request={"email_address": ["nobody@example.com"]}) == []
