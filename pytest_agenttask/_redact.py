"""Keeping the secret key and task tickets out of every text we produce."""

from __future__ import annotations

import functools
import logging
import re

__all__ = ["Secret", "install_log_filter", "mask_tickets"]

MASK = "***"


@functools.cache
def _patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    """The patterns and their replacements, compiled on first use (not at import:
    enabling the plugin on a suite that never masks anything costs nothing)."""
    # After "?", "&" (raw or percent-encoded) or a word boundary, so a ticket quoted
    # in an HTML error page ("<p>ticket=...") is masked too.
    ticket = re.compile(
        r"((?:\?|&|%3F|%26|\b)(?:ticket|__clerk_ticket)(?:=|%3D))[^&#\s'\"<>]+", re.IGNORECASE
    )
    # What a consumed ticket hands out: the handshake and the dev-browser token in the
    # redirect's query, and the session and client tokens in cookie headers (names may
    # carry a suffix, "__session_Ab12"). A value ends at ";" or "," too (cookie lists).
    sign_in_tokens = re.compile(
        r"((?:\?|&|%3F|%26|\b)(?:__clerk_handshake|__clerk_db_jwt|__session|__client)"
        r"(?:_[A-Za-z0-9-]+)?(?:=|%3D))[^&#\s'\"<>;,]+",
        re.IGNORECASE,
    )
    # Any JWT (session tokens, handshakes, tickets), wherever it appears.
    jwt = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
    secret_key = re.compile(r"sk_(?:test|live)_[^\s'\"&;,<>]+")
    masked = r"\1" + MASK
    return ((ticket, masked), (sign_in_tokens, masked), (jwt, MASK), (secret_key, "sk_***"))


def mask_tickets(text: str) -> str:
    """Return ``text`` with every ``ticket=`` query value and every secret key masked,
    and every sign-in token too: ``__clerk_handshake``, ``__clerk_db_jwt``,
    ``__session`` and ``__client`` values, and anything shaped like a JWT."""
    for pattern, replacement in _patterns():
        text = pattern.sub(replacement, text)
    return text


class Secret:
    """A secret string that never shows itself in ``repr``, ``str`` or f-strings.

    Read the value with :meth:`reveal` at the single place it must be sent.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _MaskingFilter(logging.Filter):
    """Masks tickets, handshakes and tokens in the records of httpx and httpcore.

    httpx logs every request URL at INFO (a task URL carries its ticket), and
    httpcore logs response headers at DEBUG (the redirect's ``Location`` carries
    the handshake, ``Set-Cookie`` the client token).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: leave it to logging's own handling
            return True
        masked = mask_tickets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


_LOGGERS_TO_MASK = (
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def install_log_filter() -> None:
    """Add the masking filter to httpx's and httpcore's loggers, once each."""
    for name in _LOGGERS_TO_MASK:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _MaskingFilter) for f in logger.filters):
            logger.addFilter(_MaskingFilter())

