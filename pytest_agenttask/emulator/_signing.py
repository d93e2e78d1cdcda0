"""RS256 signing for session tokens and handshakes, with one RSA key per emulator.

The only module of the package that needs ``cryptography`` and ``PyJWT``, the
optional extra ``pytest-agenttask[emulator]``. Both are imported lazily: importing
the emulator (or the plugin) never needs them; :meth:`RS256Signer.ensure_available`,
called when an emulator starts, reports their absence clearly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._ids import new_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

__all__ = ["INSTALL_HINT", "RS256Signer"]

INSTALL_HINT = "pip install 'pytest-agenttask[emulator]'"
_KEY_SIZE = 2048
_PUBLIC_EXPONENT = 65537


def _missing(error: ImportError) -> ImportError:
    return ImportError(
        "The Clerk emulator signs session tokens (RS256) with the cryptography and PyJWT "
        f"packages, and {error.name or 'one of them'} is not installed. "
        f"Install them with: {INSTALL_HINT}",
        name=error.name,
    )


@dataclass(frozen=True)
class _Key:
    kid: str
    private_key: RSAPrivateKey
    public_pem: str
    jwk: dict[str, str]


class RS256Signer:
    """Signs JWTs with a per-instance RSA 2048 key, made on first use.

    The key id has the shape of a Clerk instance id (``ins_`` + 27 base62
    characters), which is what Clerk uses as ``kid``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: _Key | None = None

    def ensure_available(self) -> None:
        """Raise ``ImportError`` naming the extra to install if the libraries are missing."""
        try:
            import jwt  # noqa: F401
            from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: F401
        except ImportError as error:
            raise _missing(error) from error

    @property
    def kid(self) -> str:
        return self._get().kid

    @property
    def public_key_pem(self) -> str:
        """The public key, PEM-encoded SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``)."""
        return self._get().public_pem

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK, in the order Clerk's JWKS lists the fields."""
        return dict(self._get().jwk)

    def sign(self, claims: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        """An RS256 JWT of ``claims`` whose header carries ``typ``, ``kid`` and ``headers``."""
        try:
            import jwt
        except ImportError as error:  # pragma: no cover - checked by ensure_available
            raise _missing(error) from error
        key = self._get()
        header = {"typ": "JWT", "kid": key.kid, **(headers or {})}
        return jwt.encode(claims, key.private_key, algorithm="RS256", headers=header)

    def _get(self) -> _Key:
        with self._lock:
            if self._key is None:
                self._key = _generate()
            return self._key


def _generate() -> _Key:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm
    except ImportError as error:
        raise _missing(error) from error
    private_key = rsa.generate_private_key(public_exponent=_PUBLIC_EXPONENT, key_size=_KEY_SIZE)
    public_key = private_key.public_key()
    pem = public_key.public_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode("ascii")
    numbers = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    kid = new_id("ins")
    jwk = {
        "use": "sig",
        "kty": "RSA",
        "kid": kid,
        "alg": "RS256",
        "n": str(numbers["n"]),
        "e": str(numbers["e"]),
    }
    return _Key(kid, private_key, pem, jwk)
