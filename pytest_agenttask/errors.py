"""Exceptions and warnings of pytest-agenttask.

The tree::

    AgentTaskError                  base of everything this package raises
    ├── ConfigurationError          a setting, marker or hook result is invalid
    ├── ClerkAPIError               Clerk answered with an error (status, code, ...)
    └── ClerkTransportError         no usable answer: connection failure, timeout,
                                    or a body that is not Clerk's JSON

    AgentTaskWarning(UserWarning)   base of the warnings this package emits

No exception message or repr ever contains the secret key or a task URL's ticket.
"""

from __future__ import annotations

__all__ = [
    "AgentTaskError",
    "AgentTaskWarning",
    "ClerkAPIError",
    "ClerkTransportError",
    "ConfigurationError",
]


class AgentTaskError(Exception):
    """Base class of every exception raised by pytest-agenttask."""


class ConfigurationError(AgentTaskError):
    """A setting, marker keyword or hook result is invalid.

    The message names the input and where it came from.
    """


class ClerkAPIError(AgentTaskError):
    """Clerk answered a request with an error.

    Carries the HTTP ``status`` and the first entry of Clerk's error envelope
    (``code``, ``message``, ``long_message``) plus ``clerk_trace_id``; all
    entries are in ``errors``.
    """

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        long_message: str = "",
        clerk_trace_id: str | None = None,
        errors: list[dict[str, object]] | None = None,
        method: str = "",
        path: str = "",
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.long_message = long_message
        self.clerk_trace_id = clerk_trace_id
        self.errors = list(errors or [])
        self.method = method
        self.path = path
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.path}: " if self.method else ""
        detail = self.long_message or self.message
        trace = f" (clerk_trace_id {self.clerk_trace_id})" if self.clerk_trace_id else ""
        return f"{where}Clerk answered {self.status} {self.code}: {detail}{trace}"

    def __repr__(self) -> str:
        return (
            f"ClerkAPIError(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, clerk_trace_id={self.clerk_trace_id!r})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only __init__: rebuild through a helper so the error pickles
        # (pytest-xdist sends exceptions between processes).
        return (_rebuild_clerk_api_error, (self.__dict__.copy(),))


def _rebuild_clerk_api_error(state: dict[str, object]) -> ClerkAPIError:
    error = ClerkAPIError.__new__(ClerkAPIError)
    error.__dict__.update(state)
    Exception.__init__(error, str(error))
    return error


class ClerkTransportError(AgentTaskError):
    """No usable answer from Clerk: the connection failed, timed out, or the
    body was not Clerk's JSON. ``retryable`` says whether retrying may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


class AgentTaskWarning(UserWarning):
    """Base class of every warning emitted by pytest-agenttask."""
