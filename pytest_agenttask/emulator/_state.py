"""What the emulator knows: users, agent tasks, sessions, the request log. Snapshots are frozen."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Literal

from ._ids import new_id
from ._tokens import TokenSigner

__all__ = [
    "API",
    "EmulatedSession",
    "EmulatedTask",
    "EmulatedUser",
    "InstanceState",
    "RecordedRequest",
    "SessionStatus",
    "TaskStatus",
]

TaskStatus = Literal["pending", "consumed", "revoked"]
# The statuses of Clerk's Session object; the emulator uses active, revoked and expired.
SessionStatus = Literal[
    "active", "revoked", "ended", "expired", "removed", "abandoned", "replaced", "pending"
]
API = Literal["backend", "frontend"]


@dataclass(frozen=True)
class EmulatedUser:
    """A user of the emulated instance. Its identifiers count as verified when ``verified``."""

    user_id: str
    email_address: str | None = None
    phone_number: str | None = None
    username: str | None = None
    verified: bool = True
    created_at: float = field(default_factory=time.time)

    def matches(self, identifier: str) -> bool:
        """Whether ``identifier`` is one of this user's verified identifiers."""
        wanted = identifier.strip()
        if self.username is not None and wanted.casefold() == self.username.casefold():
            return True
        if not self.verified:
            return False
        if self.email_address is not None and wanted.casefold() == self.email_address.casefold():
            return True
        return self.phone_number is not None and wanted == self.phone_number


@dataclass(frozen=True)
class EmulatedTask:
    """A snapshot of one agent task. The ticket is deliberately not part of it."""

    agent_task_id: str
    agent_id: str
    user_id: str
    agent_name: str
    task_description: str
    redirect_url: str
    session_max_duration_in_seconds: int
    status: TaskStatus = "pending"
    created_at: float = field(default_factory=time.time)
    consumed_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True)
class EmulatedSession:
    """A snapshot of one Clerk session, as of the moment it was taken.

    An active session whose ``expire_at`` has passed is reported ``"expired"``.
    Times are unix seconds (floats); the Backend API renders them in
    milliseconds, as Clerk does. ``actor`` is the agent for a session that an
    agent task created: ``{"type": "agent", "sub": agent_id, "task_id": ...}``.
    ``authorized_party`` is the origin its session tokens carry as ``azp``.
    """

    session_id: str
    user_id: str
    client_id: str
    status: SessionStatus
    actor: dict[str, str] | None = field(default=None, hash=False)
    agent_task_id: str | None = None
    created_at: float = field(default_factory=time.time)
    expire_at: float = 0.0
    revoked_at: float | None = None
    authorized_party: str | None = None

    @property
    def updated_at(self) -> float:
        """When the session last changed."""
        return self.revoked_at if self.revoked_at is not None else self.created_at

    def observed_at(self, now: float) -> EmulatedSession:
        """This session as seen at ``now``: an active one past ``expire_at`` is expired."""
        if self.status == "active" and now >= self.expire_at:
            return replace(self, status="expired", actor=_copy(self.actor))
        return replace(self, actor=_copy(self.actor))


def _copy(actor: dict[str, str] | None) -> dict[str, str] | None:
    return dict(actor) if actor is not None else None


@dataclass(frozen=True)
class RecordedRequest:
    """One request the emulator received. ``path`` never has the query string.

    ``status`` is ``None`` when the connection was dropped; ``fault`` names what
    replaced the normal answer (an injected fault's description, or
    ``"rate_limit"``).

    Timing (unix seconds, :func:`time.time`): ``at`` is when the request was
    read, ``finished_at`` when its answer was ready to send (after the network
    model's delays; ``None`` for a request recorded without one). ``network_delay``
    is the seconds the network model added (``latency``, plus ``connect_cost``
    on a new connection). ``connection`` numbers the connection per API (from
    1), and ``new_connection`` marks its first request.
    """

    api: API
    method: str
    path: str
    status: int | None
    fault: str | None
    at: float
    finished_at: float | None = None
    network_delay: float = 0.0
    connection: int = 0
    new_connection: bool = False

    @property
    def duration(self) -> float | None:
        """Seconds from reading the request to having its answer ready."""
        return None if self.finished_at is None else self.finished_at - self.at


class InstanceState:
    """The mutable state of one emulated instance; hold ``lock`` to touch it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.users: dict[str, EmulatedUser] = {}
        self.tasks: dict[str, EmulatedTask] = {}
        self.sessions: dict[str, EmulatedSession] = {}  # oldest first
        self.agents: dict[str, str] = {}  # agent_name -> agent_id, stable per instance
        self.requests: list[RecordedRequest] = []
        self.signer = TokenSigner()

    def agent_id_for(self, agent_name: str) -> str:
        with self.lock:
            if agent_name not in self.agents:
                self.agents[agent_name] = new_id("agt")
            return self.agents[agent_name]

    def find_user(self, identifier: str) -> EmulatedUser | None:
        with self.lock:
            return next((u for u in self.users.values() if u.matches(identifier)), None)

    def session(self, session_id: str, now: float | None = None) -> EmulatedSession | None:
        """A snapshot of one session as seen at ``now`` (default: the current time)."""
        with self.lock:
            session = self.sessions.get(session_id)
        return session.observed_at(time.time() if now is None else now) if session else None

    def all_sessions(self, now: float | None = None) -> list[EmulatedSession]:
        """Snapshots of every session, oldest first."""
        with self.lock:
            sessions = list(self.sessions.values())
        at = time.time() if now is None else now
        return [session.observed_at(at) for session in sessions]
