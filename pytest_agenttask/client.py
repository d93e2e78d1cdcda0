"""Clerk Backend API client for Agent Tasks, sync and async, over httpx.

Both clients are thin shells around the same pure pieces: :class:`RetryPolicy`
(when to wait and for how long), the response parsing functions (Clerk's JSON,
its error envelope, anything else) and ``_Core`` (stats and logging). Only the
I/O differs.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json as jsonlib
import logging
import os
import random
import ssl
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from types import TracebackType
from typing import Any, Generic, TypeVar

import httpx

from ._redact import Secret, mask_tickets
from .errors import AgentTaskError, ClerkAPIError, ClerkTransportError, ConfigurationError
from .models import AgentTask

__all__ = [
    "CLERK_API_VERSION",
    "DEFAULT_API_URL",
    "DEFAULT_MAX_RATE_LIMIT_WAIT",
    "AsyncBackendClient",
    "BackendClient",
    "ClientStats",
    "RetryPolicy",
]

DEFAULT_API_URL = "https://api.clerk.com/v1"
CLERK_API_VERSION = "2025-11-10"  # what the official Python SDK sends

try:
    _VERSION = _dist_version("pytest-agenttask")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = "0+unknown"

DEFAULT_USER_AGENT = f"pytest-agenttask/{_VERSION}"

log = logging.getLogger("pytest_agenttask.client")
# The "a task may be left pending" warning goes to the package logger, where
# users look for the plugin's warnings, not to the chatty client logger.
warn_log = logging.getLogger("pytest_agenttask")

T = TypeVar("T")

_BODY_PREVIEW = 80
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_JITTER = 0.1


# --------------------------------------------------------------------------- #
# Retry policy
#
# Which failures may have created something server-side (POST /agents/tasks is
# not idempotent; each call creates a new task):
#
#   nothing was created, safe to retry
#     - 429: the rate limiter answers before the handler runs;
#     - 503: a gateway or load balancer refusing the request;
#     - ConnectError / ConnectTimeout / PoolTimeout / ProxyError: the request
#       never left this process.
#   may have created a task whose URL we never received ("ambiguous")
#     - ReadTimeout / ReadError / WriteTimeout / WriteError / RemoteProtocolError
#       and other network errors once the request may have been sent;
#     - 500, 502, 504 and any other 5xx.
#
# Decision: retry ambiguous failures too. An orphaned task is harmless: its
# ticket never left Clerk, so nobody can use it, and it cannot be revoked
# because its id is unknown. Each ambiguous attempt of a non-idempotent call is
# counted in ``stats.ambiguous_creates`` and logged as a WARNING on the
# "pytest_agenttask" logger, so a run can report it.
#
# Revoke is safe to retry on everything. A retried revoke whose first attempt
# did succeed answers 400 agent_task_cannot_be_revoked; callers already treat
# that code as "not pending any more".
#
# Any other 4xx (400, 401, 403, 404, 422, 408, ...) is final and not retried,
# as are a 2xx whose body is not the expected JSON, and local errors
# (unsupported scheme, malformed request).
#
# Two budgets per call:
#
#   rate limited: a 429 that says how long to wait (``Retry-After`` in seconds
#     or as an HTTP-date, or ``retry-after-ms``; Clerk's limiter and the
#     emulator's send one). Nothing failed: Clerk only asks us to come back
#     later, so the client waits as told, jittered upwards by up to 10% (so
#     that parallel workers do not all come back in the same instant), and
#     does NOT consume ``retries``. These waits are bounded instead by
#     ``max_rate_limit_wait``, the seconds one call may spend waiting on the
#     rate limit in total: 120 s by default, twelve windows of Clerk's limit
#     (100 requests per 10 s), enough for a pytest-xdist run whose workers
#     share that limit to get through, short enough that a limit that never
#     lifts still ends the call. A Retry-After that does not fit in what is
#     left of that budget makes the client give up at once (a shorter wait
#     would only earn another 429). A wait counts at least 0.1 s, so that a
#     repeated ``Retry-After: 0`` exhausts the budget too.
#   failed: 5xx, connection errors, timeouts, and a 429 without a wait. At
#     most ``retries`` retries, after ``Retry-After`` when the answer carries
#     one (a 503 may), else exponential backoff (``backoff`` * 2**n, capped at
#     ``max_backoff``) with up to 10% jitter. A Retry-After longer than
#     ``max_backoff`` here makes the client give up at once and raise the
#     error: a longer wait is what the user capped.
# --------------------------------------------------------------------------- #

DEFAULT_MAX_RATE_LIMIT_WAIT = 120.0
_MIN_RATE_LIMIT_WAIT = 0.1


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to retry and how long to wait in between."""

    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    jitter: float = _JITTER
    max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT

    def delay(self, retry: int, retry_after: float | None, rand: float) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based), or ``None`` to give up.

        ``rand`` is a number in [0, 1) that spreads the waits of parallel workers.
        """
        if retry_after is not None:
            if retry_after > self.max_backoff:
                return None
            # The server asked for at least this long: jitter only upwards.
            return min(retry_after * (1 + self.jitter * rand), self.max_backoff)
        base = min(self.backoff * 2.0 ** (retry - 1), self.max_backoff)
        return base * (1 - self.jitter * rand)

    def rate_limit_delay(self, retry_after: float, waited: float, rand: float) -> float | None:
        """Seconds to wait after a 429 that asked for ``retry_after`` seconds, when
        this call already waited ``waited`` seconds on the rate limit; ``None`` to
        give up (the wait does not fit in ``max_rate_limit_wait``)."""
        remaining = self.max_rate_limit_wait - waited
        wait = max(retry_after, _MIN_RATE_LIMIT_WAIT)
        if wait > remaining:
            return None
        # The server asked for at least this long: jitter only upwards.
        return min(wait * (1 + self.jitter * rand), remaining)


def _retry_status(status: int) -> tuple[bool, bool]:
    """``(retry, ambiguous)`` for an error status; see the policy above."""
    if status in (429, 503):
        return True, False
    if 500 <= status <= 599:
        return True, True
    return False, False


def _retry_exception(exc: httpx.RequestError) -> tuple[bool, bool]:
    """``(retry, ambiguous)`` for an httpx error; see the policy above."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return True, False
    if isinstance(exc, httpx.ProxyError):
        return True, False
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return False, False
    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return True, True
    return False, False  # DecodingError, TooManyRedirects, ...


def _parse_http_date(value: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when


def _retry_after(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Seconds the server asked us to wait, from ``retry-after-ms`` or ``Retry-After``.

    An HTTP-date is measured against the response's ``Date`` header when there is
    one (immune to clock skew), else against ``now`` (default: the local clock).
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis)
        except ValueError:
            value = -1.0
        if value >= 0:
            return value / 1000
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 else None
    when = _parse_http_date(raw)
    if when is None:
        return None
    date = headers.get("date")
    reference = (_parse_http_date(date) if date else None) or now or datetime.now(timezone.utc)
    return max(0.0, (when - reference).total_seconds())


# --------------------------------------------------------------------------- #
# Response parsing
# --------------------------------------------------------------------------- #


def _where(method: str, path: str) -> str:
    return mask_tickets(f"{method} {path}")


def _describe_body(response: httpx.Response) -> str:
    """``content-type X, body '...'`` with the body masked, on one line, short."""
    content_type = response.headers.get("content-type") or "none"
    if not response.content:
        return f"content-type {content_type}, empty body"
    text = mask_tickets(" ".join(response.text.split()))
    if len(text) > _BODY_PREVIEW:
        text = text[:_BODY_PREVIEW] + "..."
    return f"content-type {content_type}, body {text!r}"


class _NotJSON(Exception):
    """The body is not JSON; the message says why."""


def _decode_json(response: httpx.Response) -> Any:
    if not response.content:
        raise _NotJSON("an empty body")
    try:
        return jsonlib.loads(response.content)
    except (ValueError, RecursionError):
        raise _NotJSON("a body that is not JSON") from None


def _api_error(
    response: httpx.Response, data: object, method: str, path: str
) -> ClerkAPIError | None:
    """A :class:`ClerkAPIError` if ``data`` is Clerk's error envelope, else ``None``."""
    if not isinstance(data, Mapping):
        return None
    errors = data.get("errors")
    if not isinstance(errors, list) or not errors or not isinstance(errors[0], Mapping):
        return None
    first = errors[0]
    code, message = first.get("code"), first.get("message")
    if not isinstance(code, str) or not isinstance(message, str):
        return None
    long_message = first.get("long_message")
    trace = data.get("clerk_trace_id")
    if not isinstance(trace, str) or not trace:
        trace = response.headers.get("clerk-trace-id") or response.headers.get("cf-ray")
    return ClerkAPIError(
        status=response.status_code,
        code=mask_tickets(code),
        message=mask_tickets(message),
        long_message=mask_tickets(long_message) if isinstance(long_message, str) else "",
        clerk_trace_id=trace,
        errors=[dict(e) for e in errors if isinstance(e, Mapping)],
        method=method,
        path=path,
    )


def _error_from_response(response: httpx.Response, method: str, path: str) -> AgentTaskError:
    """The exception for a non-2xx answer: Clerk's error, or what was wrong with it."""
    try:
        data = _decode_json(response)
    except _NotJSON:
        data = None
    error = _api_error(response, data, method, path)
    if error is not None:
        return error
    what = "a redirect" if 300 <= response.status_code < 400 else "no Clerk error envelope"
    retryable, _ = _retry_status(response.status_code)
    return ClerkTransportError(
        f"{_where(method, path)} -> {response.status_code}: Clerk answered with {what} "
        f"({_describe_body(response)})",
        retryable=retryable,
    )


def _parse_success(response: httpx.Response, call: _Call[T]) -> T:
    """The parsed body of a 2xx answer; :class:`ClerkTransportError` if not the JSON expected."""
    where = f"{_where(call.method, call.path)} -> {response.status_code}"
    try:
        data = _decode_json(response)
    except _NotJSON as exc:
        raise ClerkTransportError(
            f"{where}: Clerk answered with {exc} ({_describe_body(response)})", retryable=False
        ) from None
    try:
        return call.parse(data, f"{where}: Clerk")
    except ClerkTransportError as exc:
        raise ClerkTransportError(f"{exc} ({_describe_body(response)})", retryable=False) from None


def _parse_json(data: Any, where: str) -> Any:
    return data


def _parse_task(data: Any, where: str) -> AgentTask:
    return AgentTask.from_json(data, where=where)


def _parse_created_task(data: Any, where: str) -> AgentTask:
    task = AgentTask.from_json(data, where=where)
    if task.url is None:
        raise ClerkTransportError(
            f"{where} created agent task {task.agent_task_id} but sent no url", retryable=False
        )
    return task


# --------------------------------------------------------------------------- #
# Shared engine
# --------------------------------------------------------------------------- #


@dataclass
class ClientStats:
    """Counters of one client: every HTTP attempt, the retries among them, and
    the attempts of non-idempotent calls that may have taken effect anyway."""

    requests_sent: int = 0
    retries: int = 0
    ambiguous_creates: int = 0
    # Retries after a 429 that said how long to wait (counted in ``retries``
    # too), and the seconds waited for them.
    rate_limited: int = 0
    rate_limit_wait: float = 0.0


@dataclass
class _Budget:
    """What one call has spent: ordinary retries, and seconds waited on the rate limit."""

    retries: int = 0
    rate_limit_waited: float = 0.0


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    json: Any
    params: Mapping[str, str] | None
    idempotent: bool
    parse: Callable[[Any, str], T]
    # What an ambiguous failure of this call may have done, for the warning.
    effect: str = "the request may have taken effect server-side"


@dataclass(frozen=True)
class _Done(Generic[T]):
    value: T


@dataclass(frozen=True)
class _Fail:
    error: AgentTaskError


@dataclass(frozen=True)
class _Retry:
    wait: float


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context for every client this process makes.

    httpx builds a context for each client it creates (loading the CA bundle
    takes tens of milliseconds); the sessions make a client per test, so they
    share this one. It trusts what httpx trusts: certifi's bundle, or
    ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set.
    """
    import certifi

    return ssl.create_default_context(
        cafile=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        capath=os.environ.get("SSL_CERT_DIR") or None,
    )


class _BearerAuth(httpx.Auth):
    """``Authorization: Bearer <secret key>`` on every request; the repr hides the key."""

    def __init__(self, secret: Secret) -> None:
        self._secret = secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._secret.reveal()}"
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(secret_key=Secret('***'))"


def _add_note(error: BaseException, note: str) -> None:
    if sys.version_info >= (3, 11):
        error.add_note(note)


def _with_attempts(error: AgentTaskError, attempts: int) -> AgentTaskError:
    if attempts <= 1:
        return error
    if isinstance(error, ClerkTransportError):
        return ClerkTransportError(f"{error} (gave up after {attempts} attempts)", retryable=True)
    _add_note(error, f"gave up after {attempts} attempts")
    return error


def _check_id(value: str, what: str) -> str:
    """``value`` quoted for a path segment; refuses what could escape the segment."""
    if not isinstance(value, str) or not value or "/" in value or value in (".", ".."):
        raise ConfigurationError(f"{what} must be a non-empty id without '/', got {value!r}")
    return urllib.parse.quote(value, safe="")


def _check_api_url(api_url: str) -> str:
    url = str(api_url).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"api_url must be an absolute http(s) URL such as {DEFAULT_API_URL}, got {url!r}"
        )
    return url


def _check_secret(secret_key: str | Secret) -> Secret:
    secret = secret_key if isinstance(secret_key, Secret) else Secret(secret_key)
    value = secret.reveal()
    if not isinstance(value, str) or not value:
        raise ConfigurationError("the Clerk secret key is empty")
    if any(c.isspace() or not c.isprintable() or not c.isascii() for c in value):
        raise ConfigurationError(
            "the Clerk secret key contains whitespace or non-printable characters"
        )
    return secret


class _Core:
    """The I/O-free half of a client: settings, calls, decisions, stats, logging."""

    def __init__(
        self,
        secret_key: str | Secret,
        *,
        api_url: str,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        max_rate_limit_wait: float,
        user_agent: str,
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        if retries < 0 or backoff < 0 or max_backoff < 0:
            raise ConfigurationError(
                "retries, backoff and max_backoff must not be negative, got "
                f"{retries!r}, {backoff!r}, {max_backoff!r}"
            )
        if not max_rate_limit_wait >= 0:
            raise ConfigurationError(
                "max_rate_limit_wait must be a number of seconds >= 0, got "
                f"{max_rate_limit_wait!r}"
            )
        self.secret = _check_secret(secret_key)
        self.api_url = _check_api_url(api_url)
        self.timeout = float(timeout)
        self.policy = RetryPolicy(
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_rate_limit_wait=float(max_rate_limit_wait),
        )
        self.stats = ClientStats()
        self.rand: Callable[[], float] = random.random
        self.client_options: dict[str, Any] = {
            # A trailing slash makes httpx append "agents/tasks" after "/v1/".
            "base_url": self.api_url + "/",
            "auth": _BearerAuth(self.secret),
            "timeout": httpx.Timeout(self.timeout),
            "headers": {
                "Accept": "application/json",
                "Clerk-API-Version": CLERK_API_VERSION,
                "User-Agent": user_agent,
            },
            "follow_redirects": False,
            # Proxy and CA settings from the environment are for the real Clerk;
            # an emulator on loopback must never be reached through a proxy.
            "trust_env": urllib.parse.urlsplit(self.api_url).hostname not in _LOOPBACK,
            "verify": shared_ssl_context(),
        }

    # Calls -------------------------------------------------------------- #

    @staticmethod
    def create_call(
        *,
        agent_name: str,
        task_description: str,
        redirect_url: str,
        user_id: str | None,
        identifier: str | None,
        session_max_duration_in_seconds: int | None,
    ) -> _Call[AgentTask]:
        if (user_id is None) == (identifier is None):
            raise ConfigurationError(
                "an Agent Task is created on behalf of exactly one of user_id or identifier, "
                f"got {'both' if user_id is not None else 'neither'}"
            )
        on_behalf_of = {"user_id": user_id} if user_id is not None else {"identifier": identifier}
        body: dict[str, Any] = {
            "on_behalf_of": on_behalf_of,
            "permissions": "*",
            "agent_name": agent_name,
            "task_description": task_description,
            "redirect_url": redirect_url,
        }
        if session_max_duration_in_seconds is not None:
            body["session_max_duration_in_seconds"] = session_max_duration_in_seconds
        return _Call(
            "POST",
            "/agents/tasks",
            body,
            None,
            idempotent=False,
            parse=_parse_created_task,
            effect=(
                "an Agent Task may have been created server-side and left pending "
                "(its id is unknown, so it cannot be revoked; its ticket never left Clerk)"
            ),
        )

    @staticmethod
    def revoke_call(agent_task_id: str) -> _Call[AgentTask]:
        quoted = _check_id(agent_task_id, "agent_task_id")
        return _Call("POST", f"/agents/tasks/{quoted}/revoke", None, None, True, _parse_task)

    @staticmethod
    def generic_call(
        method: str, path: str, json: Any, params: Mapping[str, str] | None, idempotent: bool
    ) -> _Call[Any]:
        if not path.startswith("/") or "://" in path:
            raise ConfigurationError(
                f"path must be relative to api_url and start with '/', got {path!r}"
            )
        return _Call(method.upper(), path, json, params, idempotent, _parse_json)

    def request_kwargs(self, call: _Call[Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"params": call.params}
        if call.json is not None:
            kwargs["json"] = call.json
        return kwargs

    # Decisions ---------------------------------------------------------- #

    def sending(self, call: _Call[Any], attempt: int) -> None:
        self.stats.requests_sent += 1

    def after_response(
        self, call: _Call[T], attempt: int, response: httpx.Response, budget: _Budget
    ) -> _Done[T] | _Fail | _Retry:
        status = response.status_code
        log.debug(
            "%s -> %d (attempt %d/%d)",
            _where(call.method, call.path),
            status,
            attempt,
            self.policy.retries + 1,
        )
        if 200 <= status < 300:
            try:
                return _Done(_parse_success(response, call))
            except ClerkTransportError as exc:
                return _Fail(exc)
        error = _error_from_response(response, call.method, call.path)
        retry, ambiguous = _retry_status(status)
        if not retry:
            return _Fail(error)
        retry_after = _retry_after(response.headers)
        if status == 429 and retry_after is not None:
            return self._wait_or_fail(call, attempt, error, retry_after, budget)
        return self._retry_or_fail(
            call,
            attempt,
            error,
            budget,
            ambiguous=ambiguous,
            reason=f"HTTP {status}",
            retry_after=retry_after,
        )

    def after_exception(
        self, call: _Call[Any], attempt: int, exc: httpx.RequestError, budget: _Budget
    ) -> _Fail | _Retry:
        kind = type(exc).__name__
        detail = mask_tickets(" ".join(str(exc).split())) or "no detail"
        log.debug(
            "%s -> %s: %s (attempt %d/%d)",
            _where(call.method, call.path),
            kind,
            detail,
            attempt,
            self.policy.retries + 1,
        )
        retry, ambiguous = _retry_exception(exc)
        if isinstance(exc, httpx.TimeoutException):
            what = f"no answer from Clerk within {self.timeout:g} s"
        elif isinstance(exc, (httpx.ConnectError, httpx.ProxyError)):
            what = f"could not connect to Clerk at {self.api_url}"
        else:
            what = "the exchange with Clerk failed"
        error = ClerkTransportError(
            f"{_where(call.method, call.path)}: {what} ({kind}: {detail})", retryable=retry
        )
        if not retry:
            return _Fail(error)
        return self._retry_or_fail(
            call, attempt, error, budget, ambiguous=ambiguous, reason=kind, retry_after=None
        )

    def _wait_or_fail(
        self,
        call: _Call[Any],
        attempt: int,
        error: AgentTaskError,
        retry_after: float,
        budget: _Budget,
    ) -> _Fail | _Retry:
        """A 429 that says how long to wait: wait, outside the ``retries`` budget."""
        wait = self.policy.rate_limit_delay(retry_after, budget.rate_limit_waited, self.rand())
        if wait is None:
            note = (
                f"not retried: Clerk asked to wait {retry_after:g} s, more than is left of "
                f"max_rate_limit_wait ({budget.rate_limit_waited:.1f} of "
                f"{self.policy.max_rate_limit_wait:g} s waited)"
            )
            log.debug("%s: %s", _where(call.method, call.path), note)
            _add_note(error, note)
            return _Fail(_with_attempts(error, attempt))
        budget.rate_limit_waited += wait
        self.stats.retries += 1
        self.stats.rate_limited += 1
        self.stats.rate_limit_wait += wait
        log.debug(
            "%s: HTTP 429, rate limited: retry in %.2f s (%.1f of %g s of rate-limit waits)",
            _where(call.method, call.path),
            wait,
            budget.rate_limit_waited,
            self.policy.max_rate_limit_wait,
        )
        return _Retry(wait)

    def _retry_or_fail(
        self,
        call: _Call[Any],
        attempt: int,
        error: AgentTaskError,
        budget: _Budget,
        *,
        ambiguous: bool,
        reason: str,
        retry_after: float | None,
    ) -> _Fail | _Retry:
        wait: float | None = None
        retry = budget.retries + 1
        if retry <= self.policy.retries:
            wait = self.policy.delay(retry, retry_after, self.rand())
            if wait is None:
                note = (
                    f"not retried: Clerk asked to wait {retry_after:g} s, "
                    f"more than max_backoff ({self.policy.max_backoff:g} s)"
                )
                log.debug("%s: %s", _where(call.method, call.path), note)
                _add_note(error, note)
        if ambiguous and not call.idempotent:
            self.stats.ambiguous_creates += 1
            warn_log.warning(
                "%s attempt %d failed after the request was sent (%s): %s; %s",
                _where(call.method, call.path),
                attempt,
                reason,
                call.effect,
                "retrying" if wait is not None else "giving up",
            )
        if wait is None:
            return _Fail(_with_attempts(error, attempt))
        budget.retries = retry
        self.stats.retries += 1
        log.debug(
            "%s: %s, retry %d/%d in %.2f s",
            _where(call.method, call.path),
            reason,
            retry,
            self.policy.retries,
            wait,
        )
        return _Retry(wait)


# --------------------------------------------------------------------------- #
# Clients
# --------------------------------------------------------------------------- #


class BackendClient:
    """Clerk Backend API client for Agent Tasks, on one pooled :class:`httpx.Client`.

    Waits out Clerk's rate limit (a 429 with ``Retry-After``, for up to
    ``max_rate_limit_wait`` seconds per call) and retries 5xx, connection failures
    and a 429 without a wait ``retries`` times (see :class:`RetryPolicy`); raises
    :class:`ClerkAPIError` for Clerk's errors and :class:`ClerkTransportError`
    when there is no usable answer. Use it as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        secret_key: str | Secret,
        *,
        api_url: str = DEFAULT_API_URL,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        self._core = _Core(
            secret_key,
            api_url=api_url,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_rate_limit_wait=max_rate_limit_wait,
            user_agent=user_agent,
        )
        self._sleep = sleep
        self._http = httpx.Client(transport=transport, **self._core.client_options)

    @property
    def api_url(self) -> str:
        """The Backend API base URL, ``/v1`` included, without a trailing slash."""
        return self._core.api_url

    @property
    def stats(self) -> ClientStats:
        """Counters: ``requests_sent``, ``retries``, ``ambiguous_creates``, ``rate_limited``,
        ``rate_limit_wait``."""
        return self._core.stats

    def create(
        self,
        *,
        agent_name: str,
        task_description: str,
        redirect_url: str,
        user_id: str | None = None,
        identifier: str | None = None,
        session_max_duration_in_seconds: int | None = None,
    ) -> AgentTask:
        """``POST /agents/tasks`` on behalf of exactly one of ``user_id`` or ``identifier``."""
        return self._run(
            _Core.create_call(
                agent_name=agent_name,
                task_description=task_description,
                redirect_url=redirect_url,
                user_id=user_id,
                identifier=identifier,
                session_max_duration_in_seconds=session_max_duration_in_seconds,
            )
        )

    def revoke(self, agent_task_id: str) -> AgentTask:
        """``POST /agents/tasks/{id}/revoke``; a consumed or revoked task raises
        :class:`ClerkAPIError` with code ``agent_task_cannot_be_revoked``."""
        return self._run(_Core.revoke_call(agent_task_id))

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> Any:
        """Any Backend API call (``path`` relative to :attr:`api_url`), returning its JSON."""
        return self._run(_Core.generic_call(method, path, json, params, idempotent))

    def _run(self, call: _Call[T]) -> T:
        if self._http.is_closed:
            raise AgentTaskError("the Backend API client is closed")
        attempt = 0
        budget = _Budget()
        while True:
            attempt += 1
            self._core.sending(call, attempt)
            outcome: _Done[T] | _Fail | _Retry
            try:
                response = self._http.request(
                    call.method, call.path.lstrip("/"), **self._core.request_kwargs(call)
                )
            except httpx.RequestError as exc:
                outcome = self._core.after_exception(call, attempt, exc, budget)
            else:
                outcome = self._core.after_response(call, attempt, response, budget)
            if isinstance(outcome, _Retry):
                self._sleep(outcome.wait)
            elif isinstance(outcome, _Fail):
                raise outcome.error
            else:
                return outcome.value

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._http.is_closed

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_url={self.api_url!r})"


class AsyncBackendClient:
    """The same client over :class:`httpx.AsyncClient`: ``await`` every call, and
    use ``async with`` or :meth:`aclose`."""

    def __init__(
        self,
        secret_key: str | Secret,
        *,
        api_url: str = DEFAULT_API_URL,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        self._core = _Core(
            secret_key,
            api_url=api_url,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_rate_limit_wait=max_rate_limit_wait,
            user_agent=user_agent,
        )
        self._sleep = sleep
        self._http = httpx.AsyncClient(transport=transport, **self._core.client_options)

    @property
    def api_url(self) -> str:
        """The Backend API base URL, ``/v1`` included, without a trailing slash."""
        return self._core.api_url

    @property
    def stats(self) -> ClientStats:
        """Counters: ``requests_sent``, ``retries``, ``ambiguous_creates``, ``rate_limited``,
        ``rate_limit_wait``."""
        return self._core.stats

    async def create(
        self,
        *,
        agent_name: str,
        task_description: str,
        redirect_url: str,
        user_id: str | None = None,
        identifier: str | None = None,
        session_max_duration_in_seconds: int | None = None,
    ) -> AgentTask:
        """``POST /agents/tasks`` on behalf of exactly one of ``user_id`` or ``identifier``."""
        return await self._run(
            _Core.create_call(
                agent_name=agent_name,
                task_description=task_description,
                redirect_url=redirect_url,
                user_id=user_id,
                identifier=identifier,
                session_max_duration_in_seconds=session_max_duration_in_seconds,
            )
        )

    async def revoke(self, agent_task_id: str) -> AgentTask:
        """``POST /agents/tasks/{id}/revoke``; a consumed or revoked task raises
        :class:`ClerkAPIError` with code ``agent_task_cannot_be_revoked``."""
        return await self._run(_Core.revoke_call(agent_task_id))

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> Any:
        """Any Backend API call (``path`` relative to :attr:`api_url`), returning its JSON."""
        return await self._run(_Core.generic_call(method, path, json, params, idempotent))

    async def _run(self, call: _Call[T]) -> T:
        if self._http.is_closed:
            raise AgentTaskError("the Backend API client is closed")
        attempt = 0
        budget = _Budget()
        while True:
            attempt += 1
            self._core.sending(call, attempt)
            outcome: _Done[T] | _Fail | _Retry
            try:
                response = await self._http.request(
                    call.method, call.path.lstrip("/"), **self._core.request_kwargs(call)
                )
            except httpx.RequestError as exc:
                outcome = self._core.after_exception(call, attempt, exc, budget)
            else:
                outcome = self._core.after_response(call, attempt, response, budget)
            if isinstance(outcome, _Retry):
                await self._sleep(outcome.wait)
            elif isinstance(outcome, _Fail):
                raise outcome.error
            else:
                return outcome.value

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncBackendClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_url={self.api_url!r})"
