"""Clerk's error envelope and the errors the emulator answers with.

Codes, statuses and messages follow Clerk's error catalogue (clerk-docs
``data/api_errors.json``); which situation raises which code is the mapping in
``docs/clerk-contract.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._ids import new_trace_id

__all__ = ["ApiError", "ErrorDetail", "envelope", "status_error"]


@dataclass(frozen=True)
class ErrorDetail:
    """One entry of ``errors[]``."""

    code: str
    message: str
    long_message: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "long_message": self.long_message,
            "code": self.code,
            "meta": dict(self.meta),
        }


def envelope(errors: Sequence[ErrorDetail]) -> dict[str, Any]:
    """Clerk's error body: ``errors``, ``meta`` and a fresh ``clerk_trace_id``."""
    return {
        "errors": [error.to_json() for error in errors],
        "meta": {},
        "clerk_trace_id": new_trace_id(),
    }


class ApiError(Exception):
    """An error answer: raised inside a handler, turned into a response by the server."""

    def __init__(
        self,
        status: int,
        errors: Sequence[ErrorDetail],
        *,
        headers: Sequence[tuple[str, str]] = (),
        note: str | None = None,
        close: bool = False,
    ) -> None:
        self.status = status
        self.errors = tuple(errors)
        self.headers = tuple(headers)
        self.note = note  # recorded in the request log, e.g. "rate_limit"
        self.close = close  # the connection cannot be reused (unread body)
        super().__init__(f"{status} {self.errors[0].code}")

    @classmethod
    def single(
        cls,
        status: int,
        code: str,
        message: str,
        long_message: str,
        meta: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ApiError:
        return cls(status, [ErrorDetail(code, message, long_message, meta or {})], **kwargs)


# Messages per status for errors without a more specific cause (injected faults).
_STATUS_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("bad_request", "Bad request", "The request could not be processed."),
    401: (
        "authentication_invalid",
        "Invalid authentication",
        "Unable to authenticate the request, you need to supply an active session",
    ),
    403: (
        "authorization_invalid",
        "Unauthorized request",
        "You are not authorized to perform this request",
    ),
    404: ("resource_not_found", "not found", "Resource not found"),
    409: ("conflict", "Conflict", "The request conflicts with the current state."),
    413: (
        "request_body_too_large",
        "Request body too large",
        "The request body exceeds the maximum allowed size.",
    ),
    415: (
        "unsupported_content_type",
        "Content-Type is unsupported",
        "Content-Type is unsupported. You should use application/json instead.",
    ),
    422: ("form_param_value_invalid", "is invalid", "The request parameters are invalid."),
    429: (
        "too_many_requests",
        "Too many requests",
        "Too many requests, please try again later.",
    ),
    500: (
        "internal_clerk_error",
        "Oops, an unexpected error occurred",
        "There was an internal error on our servers. We've been notified and are "
        "working on fixing it.",
    ),
    503: (
        "service_unavailable",
        "Service unavailable",
        "The service is temporarily unavailable. Please try again later.",
    ),
    504: (
        "gateway_timeout",
        "Gateway timeout",
        "The server did not answer in time. Please try again later.",
    ),
}


def status_error(status: int, code: str | None = None) -> ErrorDetail:
    """The generic error for ``status``; any other 5xx (502 included) is
    ``internal_clerk_error``, the catalogue's code for unexpected errors."""
    default = _STATUS_ERRORS.get(status, _STATUS_ERRORS[500 if status >= 500 else 400])
    return ErrorDetail(code or default[0], default[1], default[2])
