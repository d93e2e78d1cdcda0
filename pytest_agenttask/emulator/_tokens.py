"""Opaque JWT-shaped tokens signed with HMAC-SHA256 under a per-instance secret.

Tickets, dev-browser tokens and the ``__client`` cookie use this shape; session
tokens and handshakes are RS256 (``_signing.py``). They are unguessable (the
payload carries random bytes and the signature needs the instance secret) and
are checked in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from typing import Any

__all__ = ["TokenSigner"]

_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_HEADER = {"alg": "HS256", "typ": "JWT"}


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _encode_json(obj: object) -> str:
    return _b64encode(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode())


class TokenSigner:
    """Signs and verifies ``header.payload.signature`` tokens for one instance."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def sign(self, claims: dict[str, Any]) -> str:
        """A token whose payload is ``claims`` plus ``iat`` and a random ``jti``."""
        payload = {"iat": int(time.time()), "jti": secrets.token_urlsafe(16), **claims}
        signing_input = f"{_encode_json(_HEADER)}.{_encode_json(payload)}"
        return f"{signing_input}.{self._signature(signing_input)}"

    def verify(self, token: str) -> dict[str, Any] | None:
        """The payload of a token this signer made, or ``None`` for anything else."""
        if not _SHAPE.fullmatch(token):
            return None
        signing_input, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature, self._signature(signing_input)):
            return None
        try:
            payload = json.loads(_b64decode(signing_input.partition(".")[2]))
        except (binascii.Error, ValueError):  # pragma: no cover - we signed it
            return None
        return payload if isinstance(payload, dict) else None

    def _signature(self, signing_input: str) -> str:
        digest = hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()
        return _b64encode(digest)
