"""What the emulator knows: users, agent tasks, the request log. Snapshots are frozen."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from ._ids import new_id
from ._tokens import TokenSigner

__all__ = [
    "API",
    "EmulatedTask",
    "EmulatedUser",
    "InstanceState",
    "RecordedRequest",
    "TaskStatus",
]

TaskStatus = Literal["pending", "consumed", "revoked"]
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
class RecordedRequest:
    """One request the emulator received. ``path`` never has the query string.

    ``status`` is ``None`` when the connection was dropped; ``fault`` names what
    replaced the normal answer (an injected fault's description, or
    ``"rate_limit"``).
    """

    api: API
    method: str
    path: str
    status: int | None
    fault: str | None
    at: float


class InstanceState:
    """The mutable state of one emulated instance; hold ``lock`` to touch it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.users: dict[str, EmulatedUser] = {}
        self.tasks: dict[str, EmulatedTask] = {}
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
