"""Sessions: opened when a task's ticket is consumed, read, revoked, and turned into tokens.

Session tokens follow Clerk's v2 session token (DOCS session-tokens; JS
``jwtv2.ts``): an RS256 JWT whose header has ``kid``, ``typ`` and the
session-token category ``cat``, with the claims ``azp``, ``exp``, ``fva``,
``iat``, ``iss``, ``jti``, ``nbf``, ``sid``, ``sts``, ``sub``, ``v`` and, for an
agent session, ``act`` (the session's actor).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from ._errors import ApiError
from ._ids import new_id
from ._signing import RS256Signer
from ._state import EmulatedSession, EmulatedTask, InstanceState, SessionStatus

__all__ = [
    "DEFAULT_SESSION_TOKEN_LIFETIME",
    "HANDSHAKE_LIFETIME",
    "SESSION_TOKEN_CATEGORY",
    "SessionManager",
    "origin_of",
]

DEFAULT_SESSION_TOKEN_LIFETIME = 60.0  # seconds, as Clerk's session tokens
HANDSHAKE_LIFETIME = 60  # seconds; the app resolves the handshake right after the redirect
# The `cat` header JS expects on a handshake (not a secret: a public category tag).
SESSION_TOKEN_CATEGORY = "cl_B7d4PD111AAA"  # noqa: S105
_CLOCK_SKEW = 5  # seconds `nbf` lies before `iat`: Clerk's default "allowed clock skew"


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, default port left out."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not host or scheme not in ("http", "https"):
        return None
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if scheme == "https" else 80
    return f"{scheme}://{host}" + (f":{port}" if port not in (None, default_port) else "")


def _not_found(session_id: str, long_message: str | None = None) -> ApiError:
    # ERR: SessionNotFound, 404 resource_not_found.
    return ApiError.single(
        404,
        "resource_not_found",
        "Session not found",
        long_message or f"No session was found with id {session_id}",
    )


class SessionManager:
    """The instance's sessions and the tokens they mint.

    ``issuer`` gives the Frontend API URL (the tokens' ``iss``), ``token_lifetime``
    the default lifetime of a session token in seconds.
    """

    def __init__(
        self,
        state: InstanceState,
        signer: RS256Signer,
        *,
        issuer: Callable[[], str],
        token_lifetime: Callable[[], float],
    ) -> None:
        self._state = state
        self._signer = signer
        self._issuer = issuer
        self._token_lifetime = token_lifetime

    # -- sessions ------------------------------------------------------------

    def open_for_task(self, task: EmulatedTask) -> EmulatedSession:
        """A new active session for the task's user, acted by the task's agent."""
        now = time.time()
        session = EmulatedSession(
            session_id=new_id("sess"),
            user_id=task.user_id,
            client_id=new_id("client"),
            status="active",
            actor={"type": "agent", "sub": task.agent_id, "task_id": task.agent_task_id},
            agent_task_id=task.agent_task_id,
            created_at=now,
            expire_at=now + task.session_max_duration_in_seconds,
            authorized_party=origin_of(task.redirect_url),
        )
        with self._state.lock:
            self._state.sessions[session.session_id] = session
        return session.observed_at(now)

    def get(self, session_id: str) -> EmulatedSession:
        """The session as it is now, or a 404."""
        session = self._state.session(session_id)
        if session is None:
            raise _not_found(session_id)
        return session

    def find(
        self,
        *,
        user_id: str | None = None,
        client_id: str | None = None,
        status: SessionStatus | None = None,
    ) -> list[EmulatedSession]:
        """The sessions matching every given criterion, newest first."""
        return [
            session
            for session in reversed(self._state.all_sessions())
            if (user_id is None or session.user_id == user_id)
            and (client_id is None or session.client_id == client_id)
            and (status is None or session.status == status)
        ]

    def revoke(self, session_id: str) -> EmulatedSession:
        """Revoke an active session. Any other status is a 400: Clerk's catalogue has
        ``invalid_action_for_session`` ("Unable to <action> session <id>") for it."""
        now = time.time()
        with self._state.lock:
            session = self._state.session(session_id, now)
            if session is None:
                raise _not_found(session_id)
            if session.status != "active":
                raise ApiError.single(
                    400,
                    "invalid_action_for_session",
                    "Invalid action for user session",
                    f"Unable to revoke session {session_id}",
                    {"session_status": session.status},
                )
            revoked = replace(self._state.sessions[session_id], status="revoked", revoked_at=now)
            self._state.sessions[session_id] = revoked
        return revoked.observed_at(now)

    def revoke_all_of(self, user_id: str) -> None:
        """Revoke every active session of a user (who is being deleted)."""
        now = time.time()
        with self._state.lock:
            for session_id, session in list(self._state.sessions.items()):
                if session.user_id == user_id and session.observed_at(now).status == "active":
                    self._state.sessions[session_id] = replace(
                        session, status="revoked", revoked_at=now
                    )

    # -- tokens --------------------------------------------------------------

    def mint(self, session_id: str, lifetime: float | None = None) -> str:
        """A session token for an active session whose user exists.

        Anything else (unknown, revoked, expired, the user deleted) is a 404
        ``resource_not_found``: of the two error statuses the spec lists for
        ``POST /sessions/{id}/tokens``, 401 is the shared "authentication
        invalid" answer about the secret key, and Clerk answers 404 for a session
        that expired or was revoked (seen by third-party test suites).
        """
        now = time.time()
        with self._state.lock:
            session = self._state.session(session_id, now)
            user_exists = session is not None and session.user_id in self._state.users
        if session is None:
            raise _not_found(session_id)
        if session.status != "active" or not user_exists:
            raise _not_found(session_id, f"No active session was found with id {session_id}")
        return self.session_token(session, lifetime, now=now)

    def session_token(
        self, session: EmulatedSession, lifetime: float | None = None, *, now: float | None = None
    ) -> str:
        """Sign a session token for ``session``, valid for at least ``lifetime``
        seconds (default: the emulator's ``session_token_lifetime``). JWT times are
        whole seconds, so ``exp`` is rounded up."""
        at = time.time() if now is None else now
        seconds = self._token_lifetime() if lifetime is None else lifetime
        issued = int(at)
        claims: dict[str, Any] = {
            "exp": math.ceil(at + seconds),
            # Minutes since the first factor was verified; no second factor (-1).
            "fva": [int((at - session.created_at) // 60), -1],
            "iat": issued,
            "iss": self._issuer(),
            "jti": secrets.token_hex(10),
            "nbf": issued - _CLOCK_SKEW,
            "sid": session.session_id,
            "sts": "active",
            "sub": session.user_id,
            "v": 2,
        }
        if session.authorized_party is not None:
            claims["azp"] = session.authorized_party
        if session.actor is not None:
            claims["act"] = dict(session.actor)
        return self._signer.sign(claims, {"cat": SESSION_TOKEN_CATEGORY})

    def handshake(self, cookies: list[str], *, now: float | None = None) -> str:
        """The development handshake: a short-lived JWT whose ``handshake`` claim
        lists the ``Set-Cookie`` lines the app's middleware is to set."""
        issued = int(time.time() if now is None else now)
        claims = {"handshake": list(cookies), "iat": issued, "exp": issued + HANDSHAKE_LIFETIME}
        return self._signer.sign(claims, {"cat": SESSION_TOKEN_CATEGORY})
