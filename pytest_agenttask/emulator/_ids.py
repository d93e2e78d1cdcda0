"""Identifiers in Clerk's shapes: a prefix and 27 random base62 characters."""

from __future__ import annotations

import secrets
import string

__all__ = ["BASE62", "new_id", "new_secret_key", "new_trace_id"]

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
_ID_LENGTH = 27


def _base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def new_id(prefix: str) -> str:
    """``prefix`` + ``_`` + 27 base62 characters, e.g. ``agttsk_2x...``."""
    return f"{prefix}_{_base62(_ID_LENGTH)}"


def new_secret_key() -> str:
    """A throwaway development secret key, ``sk_test_`` + 40 base62 characters."""
    return f"sk_test_{_base62(40)}"


def new_trace_id() -> str:
    """A ``clerk_trace_id``: 32 lowercase hex digits."""
    return secrets.token_hex(16)
