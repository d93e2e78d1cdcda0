"""The emulated endpoints: plain functions of a parsed request, free of sockets.

Backend API (paths under ``/v1``, secret key required):
``POST /v1/agents/tasks``, ``POST /v1/agents/tasks/{agent_task_id}/revoke``,
``GET /v1/sessions``, ``GET /v1/sessions/{session_id}``,
``POST /v1/sessions/{session_id}/revoke``, ``POST /v1/sessions/{session_id}/tokens``,
``GET /v1/users`` and ``GET /v1/jwks``.
Frontend API: ``GET /v1/agents/tasks?ticket=...`` and the emulator's own
landing page ``GET /__emulator/signed-in``.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

from ._errors import ApiError, ErrorDetail, envelope, status_error
from ._faults import RateLimiter
from ._ids import new_id
from ._resources import session_json, user_json
from ._sessions import SessionManager
from ._signing import RS256Signer
from ._state import EmulatedTask, EmulatedUser, InstanceState, SessionStatus

__all__ = [
    "API_VERSIONS",
    "DEFAULT_SESSION_MAX_DURATION",
    "LOOPBACK_HOSTS",
    "SIGNED_IN_PATH",
    "BackendAPI",
    "FrontendAPI",
    "Request",
    "Response",
    "TicketConsumption",
    "error_response",
    "json_response",
]

# Dated versions Clerk's Backend API knows; a request naming any other is refused.
API_VERSIONS = ("2021-02-05", "2024-10-01", "2025-04-10", "2025-11-10", "2026-03-19", "2026-05-12")
DEFAULT_SESSION_MAX_DURATION = 1800
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
SIGNED_IN_PATH = "/__emulator/signed-in"

_TASKS_PATH = "/v1/agents/tasks"
_REVOKE_PATH = re.compile(r"/v1/agents/tasks/([^/]+)/revoke")
_JWKS_PATH = "/v1/jwks"
_SESSIONS_PATH = "/v1/sessions"
_SESSION_PATH = re.compile(r"/v1/sessions/([^/]+)")
_SESSION_ACTION_PATH = re.compile(r"/v1/sessions/([^/]+)/(revoke|tokens)")
_USERS_PATH = "/v1/users"
_SESSION_STATUSES: tuple[SessionStatus, ...] = (
    "abandoned",
    "active",
    "ended",
    "expired",
    "removed",
    "replaced",
    "revoked",
)  # the values GET /v1/sessions accepts for `status`
_MAX_LIMIT = 500
_TOKEN_LIFETIME_RANGE = (30, 315360000)  # expires_in_seconds, per the spec
_USER_FILTERS = ("email_address", "phone_number", "username", "user_id")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_CREATE_FIELDS = (
    "on_behalf_of",
    "permissions",
    "agent_name",
    "task_description",
    "redirect_url",
    "session_max_duration_in_seconds",
)
_ON_BEHALF_OF_FIELDS = ("user_id", "identifier")
_SIGNED_IN_PAGE = (
    b'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
    b"<title>Signed in</title></head>\n"
    b"<body><h1>Signed in</h1><p>The Clerk emulator redirected here after an agent task "
    b"was consumed.</p></body></html>\n"
)


@dataclass(frozen=True)
class Request:
    """A request as the server parsed it. ``headers`` has lower-case names.

    ``connection`` numbers the TCP connection it came on (per listener, from 1;
    0 when unknown) and ``new_connection`` says it is that connection's first
    request, which pays the emulator's ``connect_cost``.
    """

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    framing_error: ApiError | None = None  # the body could not be read
    connection: int = 0
    new_connection: bool = False


@dataclass(frozen=True)
class Response:
    """What to send back. ``note`` labels an unusual answer in the request log."""

    status: int
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    note: str | None = None
    close: bool = False


@dataclass(frozen=True)
class TicketConsumption:
    """What a consumed ticket adds to the redirect: query parameters and cookies."""

    query: Mapping[str, str]
    cookies: Sequence[str] = ()


def json_response(
    status: int, body: object, headers: Sequence[tuple[str, str]] = (), **kwargs: Any
) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    return Response(status, [("Content-Type", "application/json"), *headers], data, **kwargs)


def error_response(error: ApiError) -> Response:
    return json_response(
        error.status,
        envelope(error.errors),
        error.headers,
        note=error.note,
        close=error.close,
    )


def _route(request: Request, routes: Mapping[str, Callable[[], Response]]) -> Response:
    handler = routes.get(request.method)
    if handler is not None:
        return handler()
    allowed = ", ".join(sorted(routes))
    raise ApiError.single(
        405,
        "method_not_allowed",
        "Method not allowed",
        f"The {request.method} method is not allowed for {request.path}. Allowed: {allowed}.",
        headers=[("Allow", allowed)],
    )


def _not_found() -> ApiError:
    return ApiError.single(404, "resource_not_found", "not found", "Resource not found")


class BackendAPI:
    """Clerk's Backend API, restricted to Agent Tasks, the sessions they open,
    users (listing) and the instance's JWKS."""

    def __init__(
        self,
        state: InstanceState,
        *,
        secret_key: str,
        limiter: Callable[[], RateLimiter | None],
        task_url: Callable[[str], str],
        sessions: SessionManager,
        signer: RS256Signer,
    ) -> None:
        self._state = state
        self._secret_key = secret_key
        self._limiter = limiter
        self._task_url = task_url
        self._sessions = sessions
        self._signer = signer

    def handle(self, request: Request) -> Response:
        self._authenticate(request)
        self._rate_limit(request)
        self._check_api_version(request)
        return _route(request, self._routes(request))

    def _routes(self, request: Request) -> dict[str, Callable[[], Response]]:
        """The handlers for the request's path, by method (a 404 for an unknown path)."""
        path = request.path
        fixed: dict[str, dict[str, Callable[[], Response]]] = {
            _TASKS_PATH: {"POST": lambda: self._create(request)},
            _JWKS_PATH: {"GET": self._jwks},
            _SESSIONS_PATH: {"GET": lambda: self._list_sessions(request)},
            _USERS_PATH: {"GET": lambda: self._list_users(request)},
        }
        if path in fixed:
            return fixed[path]
        if match := _REVOKE_PATH.fullmatch(path):
            task_id = unquote(match[1])
            return {"POST": lambda: self._revoke(task_id)}
        if match := _SESSION_ACTION_PATH.fullmatch(path):
            session_id, action = unquote(match[1]), match[2]
            if action == "revoke":
                return {"POST": lambda: self._revoke_session(session_id)}
            return {"POST": lambda: self._create_token(session_id, request)}
        if match := _SESSION_PATH.fullmatch(path):
            session_id = unquote(match[1])
            return {"GET": lambda: self._get_session(session_id)}
        raise _not_found()

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization")
        if header is None:
            raise ApiError(401, [status_error(401)])
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise ApiError.single(
                401,
                "authorization_header_format_invalid",
                "Invalid Authorization header format",
                "Invalid Authorization header format. Must be 'Bearer <YOUR_API_KEY>'",
            )
        if not hmac.compare_digest(token.encode(), self._secret_key.encode()):
            message = (
                "The provided Clerk Secret Key is invalid. "
                "Make sure that your Clerk Secret Key is correct."
            )
            raise ApiError.single(401, "clerk_key_invalid", message, message)

    def _rate_limit(self, request: Request) -> None:
        limiter = self._limiter()
        if limiter is None or request.path == _JWKS_PATH:
            return
        # Clerk limits per instance, i.e. per secret key; this emulator has one.
        wait = limiter.acquire(self._secret_key)
        if wait is not None:
            raise ApiError(
                429,
                [status_error(429)],
                headers=[("Retry-After", str(wait))],
                note="rate_limit",
            )

    def _check_api_version(self, request: Request) -> None:
        header = request.headers.get("clerk-api-version")
        in_query = parse_qs(request.query, keep_blank_values=True).get("__clerk_api_version")
        if header is not None and in_query is not None:
            raise ApiError.single(
                400,
                "api_version_invalid",
                "Invalid API version",
                "The API version was given both in the Clerk-API-Version header and in the "
                "__clerk_api_version query parameter. Provide it only once.",
            )
        version = header if header is not None else (in_query[0] if in_query else None)
        if version is not None and version.strip() not in API_VERSIONS:
            raise ApiError.single(
                400,
                "api_version_invalid",
                "Invalid API version",
                f"The provided API version {version!r} is invalid. "
                f"Supported versions: {', '.join(API_VERSIONS)}.",
            )

    def _create(self, request: Request) -> Response:
        params = _CreateParams.validate(_json_object(request))
        state = self._state
        with state.lock:
            if params.user_id is not None:
                user = state.users.get(params.user_id)
                if user is None:
                    raise ApiError.single(
                        404,
                        "resource_not_found",
                        "not found",
                        f"No user was found with id {params.user_id}",
                    )
            else:
                assert params.identifier is not None
                user = state.find_user(params.identifier)
                if user is None:
                    raise ApiError.single(
                        422,
                        "form_identifier_not_found",
                        "Couldn't find your account.",
                        "Couldn't find a user with this verified identifier.",
                        {"param_name": "on_behalf_of.identifier"},
                    )
            task = EmulatedTask(
                agent_task_id=new_id("agttsk"),
                agent_id=state.agent_id_for(params.agent_name),
                user_id=user.user_id,
                agent_name=params.agent_name,
                task_description=params.task_description,
                redirect_url=params.redirect_url,
                session_max_duration_in_seconds=params.session_max_duration,
            )
            state.tasks[task.agent_task_id] = task
        ticket = state.signer.sign({"tid": task.agent_task_id})
        return json_response(200, {**_agent_task_json(task), "url": self._task_url(ticket)})

    def _revoke(self, task_id: str) -> Response:
        # The request has no body; whatever came is ignored.
        state = self._state
        with state.lock:
            task = state.tasks.get(task_id)
            if task is None:
                raise ApiError.single(
                    404,
                    "agent_task_not_found",
                    "agent task not found",
                    "The requested agent task could not be found.",
                )
            if task.user_id not in state.users:
                raise _subject_not_found()
            if task.status != "pending":
                raise ApiError.single(
                    400,
                    "agent_task_cannot_be_revoked",
                    "cannot revoke agent task",
                    "cannot revoke agent task",
                )
            task = replace(task, status="revoked", revoked_at=time.time())
            state.tasks[task_id] = task
        return json_response(200, _agent_task_json(task))

    # -- JWKS, sessions, users ---------------------------------------------

    def _jwks(self) -> Response:
        # The spec's global bearerAuth applies (the SDK sends the secret key);
        # Clerk does not rate-limit this endpoint (see _rate_limit).
        return json_response(200, {"keys": [self._signer.jwk()]})

    def _list_sessions(self, request: Request) -> Response:
        query = _Query(request.query)
        user_id = query.string("user_id")
        client_id = query.string("client_id")
        status = query.choice("status", _SESSION_STATUSES)
        paginated = query.boolean("paginated")
        limit = query.integer("limit", 10, 1, _MAX_LIMIT)
        offset = query.integer("offset", 0, 0, None)
        if user_id is None and client_id is None:
            # Deprecated since 2024-01-01 (the spec): "at least one of client_id or
            # user_id parameters should be provided".
            query.errors.append(
                ErrorDetail(
                    "form_param_missing",
                    "at least one parameter must be provided",
                    "at least one of `client_id, user_id` must be provided",
                    {"param_name": "user_id"},
                )
            )
        query.check()
        found = self._sessions.find(user_id=user_id, client_id=client_id, status=status)
        page = [session_json(session) for session in found[offset : offset + limit]]
        if paginated:
            return json_response(200, {"data": page, "total_count": len(found)})
        return json_response(200, page)

    def _get_session(self, session_id: str) -> Response:
        return json_response(200, session_json(self._sessions.get(session_id)))

    def _revoke_session(self, session_id: str) -> Response:
        # The request has no body; whatever came is ignored.
        return json_response(200, session_json(self._sessions.revoke(session_id)))

    def _create_token(self, session_id: str, request: Request) -> Response:
        body = _json_object(request)
        lifetime = body.get("expires_in_seconds")
        low, high = _TOKEN_LIFETIME_RANGE
        if lifetime is not None:
            if isinstance(lifetime, bool) or not isinstance(lifetime, int):
                raise ApiError(422, [_type_invalid("expires_in_seconds", "integer")])
            if not low <= lifetime <= high:
                raise ApiError(
                    422,
                    [
                        _value_invalid(
                            "expires_in_seconds",
                            f"expires_in_seconds must be between {low} and {high}.",
                        )
                    ],
                )
        jwt = self._sessions.mint(session_id, None if lifetime is None else float(lifetime))
        return json_response(200, {"object": "token", "jwt": jwt})

    def _list_users(self, request: Request) -> Response:
        query = _Query(request.query)
        filters = {name: query.strings(name) for name in _USER_FILTERS}
        limit = query.integer("limit", 10, 1, _MAX_LIMIT)
        offset = query.integer("offset", 0, 0, None)
        query.check()
        with self._state.lock:
            users = list(self._state.users.values())
        # Clerk's default order is `-created_at`, newest first.
        found = [user for user in reversed(users) if _user_matches(user, filters)]
        return json_response(200, [user_json(user) for user in found[offset : offset + limit]])


def _user_matches(user: EmulatedUser, filters: Mapping[str, list[str]]) -> bool:
    """Each given filter must match (AND); within one, any value may (OR).
    ``user_id`` values may start with ``+`` (include) or ``-`` (exclude)."""
    emails = filters["email_address"]
    if emails and (
        user.email_address is None
        or user.email_address.casefold() not in {email.casefold() for email in emails}
    ):
        return False
    phones = filters["phone_number"]
    if phones and (
        user.phone_number is None
        or _phone(user.phone_number) not in {_phone(phone) for phone in phones}
    ):
        return False
    usernames = filters["username"]
    if usernames and (
        user.username is None
        or user.username.casefold() not in {name.casefold() for name in usernames}
    ):
        return False
    ids = filters["user_id"]
    excluded = {value[1:] for value in ids if value.startswith("-")}
    included = {value.removeprefix("+") for value in ids if not value.startswith("-")}
    if user.user_id in excluded:
        return False
    return not included or user.user_id in included


def _phone(number: str) -> str:
    # A bare "+" in a query string decodes to a space: "+1555..." arrives as " 1555...".
    digits = "".join(ch for ch in number if ch.isdigit())
    return f"+{digits}"


class _Query:
    """Query parameters, validated one by one; problems gather in ``errors``
    and :meth:`check` reports them all at once (422)."""

    def __init__(self, query: str) -> None:
        self._values = parse_qs(query, keep_blank_values=True)
        self.errors: list[ErrorDetail] = []

    def strings(self, name: str) -> list[str]:
        return [value.strip() for value in self._values.get(name, []) if value.strip()]

    def string(self, name: str) -> str | None:
        values = self.strings(name)
        return values[0] if values else None

    def choice(self, name: str, allowed: Sequence[SessionStatus]) -> SessionStatus | None:
        value = self.string(name)
        if value is None:
            return None
        for option in allowed:
            if value == option:
                return option
        self.errors.append(
            _value_invalid(
                name,
                f"{value} does not match the allowed values for parameter {name}. "
                f"You can use one of the following: {', '.join(allowed)}",
            )
        )
        return None

    def boolean(self, name: str) -> bool:
        value = self.string(name)
        if value is None:
            return False
        if value.lower() in ("true", "1"):
            return True
        if value.lower() not in ("false", "0"):
            self.errors.append(_type_invalid(name, "boolean"))
        return False

    def integer(self, name: str, default: int, low: int, high: int | None) -> int:
        """The parameter's value, or ``default`` when absent or invalid (then an error)."""
        value = self.string(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            self.errors.append(_type_invalid(name, "integer"))
            return default
        if number < low or (high is not None and number > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.errors.append(_value_invalid(name, f"{name} must be {bound}."))
            return default
        return number

    def check(self) -> None:
        if self.errors:
            raise ApiError(422, self.errors)


def _agent_task_json(task: EmulatedTask) -> dict[str, Any]:
    return {
        "object": "agent_task",
        "agent_id": task.agent_id,
        "agent_task_id": task.agent_task_id,
        "task_id": task.agent_task_id,
    }


def _subject_not_found() -> ApiError:
    return ApiError.single(
        404,
        "agent_task_subject_not_found",
        "user not found",
        "The user of the agent task no longer exists. Please request a new one.",
    )


def _json_object(request: Request) -> dict[str, Any]:
    if not request.body.strip():
        return {}  # no body: every required parameter is reported missing
    content_type = request.headers.get("content-type", "")
    if content_type.partition(";")[0].strip().lower() != "application/json":
        raise ApiError.single(
            415,
            "unsupported_content_type",
            "Content-Type is unsupported",
            f"Content-Type {content_type or '(none)'} is unsupported. "
            "You should use application/json instead.",
        )
    try:
        body = json.loads(request.body.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        body = None
    if not isinstance(body, dict):
        raise ApiError.single(
            400,
            "request_body_invalid",
            "Request body invalid",
            "The request body is invalid. Please consult the API documentation for more "
            "information.",
        )
    return body


def _missing(name: str) -> ErrorDetail:
    return ErrorDetail(
        "form_param_missing", "is missing", f"{name} must be included.", {"param_name": name}
    )


def _unknown(name: str) -> ErrorDetail:
    return ErrorDetail(
        "form_param_unknown",
        "is unknown",
        f"{name} is not a valid parameter for this request.",
        {"param_name": name},
    )


def _type_invalid(name: str, type_name: str) -> ErrorDetail:
    article = "an" if type_name[:1] in "aeiou" else "a"
    return ErrorDetail(
        "form_param_type_invalid",
        "is invalid",
        f"`{name}` must be {article} `{type_name}`.",
        {"param_name": name},
    )


def _value_invalid(name: str, long_message: str) -> ErrorDetail:
    return ErrorDetail("form_param_value_invalid", "is invalid", long_message, {"param_name": name})


@dataclass(frozen=True)
class _CreateParams:
    user_id: str | None
    identifier: str | None
    agent_name: str
    task_description: str
    redirect_url: str
    session_max_duration: int

    @classmethod
    def validate(cls, body: dict[str, Any]) -> _CreateParams:
        """The parameters of a create request, or a 422 listing every problem.

        JSON ``null`` counts as absent, as does an empty string (Clerk's
        ``required`` validation treats zero values as missing).
        """
        errors = [_unknown(key) for key in body if key not in _CREATE_FIELDS]
        user_id, identifier = _on_behalf_of(body.get("on_behalf_of"), errors)
        permissions = _required_string(body, "permissions", errors)
        if permissions is not None and permissions != "*":
            errors.append(
                _value_invalid(
                    "permissions",
                    f"{permissions} does not match the allowed values for parameter "
                    "permissions. You can use one of the following: *",
                )
            )
        agent_name = _required_string(body, "agent_name", errors)
        task_description = _required_string(body, "task_description", errors)
        redirect_url = _required_string(body, "redirect_url", errors)
        # Only the shape of an absolute URL is checked here (the schema's
        # `format: uri`, and "must be a valid absolute URL"); the scheme and the
        # instance's domains are checked when the ticket is consumed, as the
        # spec says, so a foreign host still creates a task.
        if redirect_url is not None and not _is_absolute_url(redirect_url):
            errors.append(
                ErrorDetail(
                    "form_param_format_invalid",
                    "is invalid",
                    "redirect_url must be a valid absolute URL.",
                    {"param_name": "redirect_url"},
                )
            )
        duration = body.get("session_max_duration_in_seconds")
        if duration is None:
            duration = DEFAULT_SESSION_MAX_DURATION
        elif isinstance(duration, bool) or not isinstance(duration, int):
            errors.append(_type_invalid("session_max_duration_in_seconds", "integer"))
        elif duration <= 0:
            errors.append(
                _value_invalid(
                    "session_max_duration_in_seconds",
                    "session_max_duration_in_seconds must be greater than 0.",
                )
            )
        if errors:
            raise ApiError(422, errors)
        assert agent_name is not None
        assert task_description is not None
        assert redirect_url is not None
        assert isinstance(duration, int)
        return cls(user_id, identifier, agent_name, task_description, redirect_url, duration)


def _required_string(body: Mapping[str, Any], name: str, errors: list[ErrorDetail]) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        errors.append(_type_invalid(name, "string"))
        return None
    if value is None or not value.strip():
        errors.append(_missing(name))
        return None
    return value


def _on_behalf_of(value: Any, errors: list[ErrorDetail]) -> tuple[str | None, str | None]:
    if value is None:
        errors.append(_missing("on_behalf_of"))
        return None, None
    if not isinstance(value, dict):
        errors.append(_type_invalid("on_behalf_of", "object"))
        return None, None
    errors.extend(
        _unknown(f"on_behalf_of.{key}") for key in value if key not in _ON_BEHALF_OF_FIELDS
    )
    found: dict[str, str | None] = {}
    typed = True
    for key in _ON_BEHALF_OF_FIELDS:
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            errors.append(_type_invalid(f"on_behalf_of.{key}", "string"))
            typed = False
            item = None
        found[key] = item if item and item.strip() else None
    user_id, identifier = found["user_id"], found["identifier"]
    if user_id is not None and identifier is not None:
        errors.append(
            _value_invalid(
                "on_behalf_of",
                "Only one of on_behalf_of.user_id or on_behalf_of.identifier must be provided.",
            )
        )
        return None, None
    if typed and user_id is None and identifier is None:
        errors.append(
            ErrorDetail(
                "form_param_missing",
                "at least one parameter must be provided",
                "at least one of `on_behalf_of.user_id, on_behalf_of.identifier` must be provided",
                {"param_name": "on_behalf_of"},
            )
        )
    return user_id, identifier


def _is_absolute_url(url: str) -> bool:
    """``scheme://host...``; which schemes and hosts are allowed is checked later."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return False
    return bool(_SCHEME.fullmatch(parts.scheme)) and bool(parts.hostname)


class FrontendAPI:
    """Clerk's Frontend API, restricted to consuming agent-task tickets."""

    def __init__(
        self,
        state: InstanceState,
        *,
        domains: Sequence[str],
        on_consumed: Callable[[EmulatedTask], TicketConsumption],
    ) -> None:
        self._state = state
        self._domains = tuple(domains)
        self._on_consumed = on_consumed

    def handle(self, request: Request) -> Response:
        if request.path == _TASKS_PATH:
            return _route(request, {"GET": lambda: self._consume(request)})
        if request.path == SIGNED_IN_PATH:
            return _route(request, {"GET": self._signed_in})
        raise _not_found()

    def _consume(self, request: Request) -> Response:
        tickets = parse_qs(request.query, keep_blank_values=True).get("ticket")
        if not tickets or not tickets[0]:
            raise ApiError.single(
                400,
                "missing_query_parameter",
                "Missing query parameter",
                "The query parameter 'ticket' is missing from the request. Please consult the "
                "API documentation for more information.",
            )
        claims = self._state.signer.verify(tickets[0]) or {}
        state = self._state
        with state.lock:
            task_id = claims.get("tid")
            task = state.tasks.get(task_id) if isinstance(task_id, str) else None
            if task is None:
                raise ApiError.single(
                    400,
                    "ticket_invalid_code",
                    "ticket is invalid",
                    "This ticket is invalid. Make sure you're using a valid ticket generated by "
                    "Clerk.",
                )
            if task.status == "revoked":
                raise ApiError.single(
                    400,
                    "agent_task_revoked",
                    "agent task has been revoked",
                    "This agent task has been revoked and cannot be used anymore.",
                )
            if task.status == "consumed":
                raise ApiError.single(
                    400,
                    "agent_task_already_used",
                    "agent task has already been used",
                    "This agent task has already been used. Each task can only be used once.",
                )
            if task.user_id not in state.users:
                raise _subject_not_found()
            # A rejected redirect leaves the task pending: FAPI validates the URL
            # before it signs anyone in, so nothing was spent and teardown can
            # still revoke the task.
            self._check_redirect_url(task.redirect_url)
            task = replace(task, status="consumed", consumed_at=time.time())
            state.tasks[task.agent_task_id] = task
        consumption = self._on_consumed(task)
        headers = [
            ("Location", _add_query(task.redirect_url, consumption.query)),
            ("Cache-Control", "no-store"),
            *(("Set-Cookie", cookie) for cookie in consumption.cookies),
        ]
        return Response(307, headers)

    def _check_redirect_url(self, url: str) -> None:
        try:
            parts = urlsplit(url)
            host = parts.hostname
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            host = None
        # A development instance accepts http as well as https.
        if host is None or parts.scheme.lower() not in ("http", "https"):
            raise ApiError.single(
                422,
                "invalid_redirect_url",
                "Redirect url invalid",
                "The provided redirect url is not in a valid format",
            )
        if not self._is_instance_host(host):
            raise ApiError.single(
                422,
                "redirect_url_domain_mismatch",
                "Redirect url does not belong to your domain",
                "The provided redirect URL must belong to your instance's domain",
            )

    def _is_instance_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        if host in LOOPBACK_HOSTS:
            return True
        return any(host == domain or host.endswith(f".{domain}") for domain in self._domains)

    def _signed_in(self) -> Response:
        headers = [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")]
        return Response(200, headers, _SIGNED_IN_PAGE)


def _add_query(url: str, extra: Mapping[str, str]) -> str:
    """``url`` with ``extra`` appended to its query; its own parameters stay as
    they were written, except those ``extra`` replaces."""
    parts = urlsplit(url)
    kept = [
        segment
        for segment in parts.query.split("&")
        if segment and unquote_plus(segment.partition("=")[0]) not in extra
    ]
    query = "&".join([*kept, urlencode(dict(extra))]) if extra else "&".join(kept)
    return urlunsplit(parts._replace(query=query))
