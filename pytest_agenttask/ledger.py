"""A run's record of every task it created and how each one was closed."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from .errors import AgentTaskError, ClerkAPIError

if TYPE_CHECKING:
    from .models import AgentTask

__all__ = ["CloseOutcome", "TaskLedger", "TaskRecord", "close_task"]

TaskState = Literal["open", "revoked", "consumed", "gone", "failed"]
CloseOutcome = Literal["revoked", "consumed", "gone"]


class _Revoker(Protocol):
    def revoke(self, agent_task_id: str) -> AgentTask: ...


def close_task(client: _Revoker, agent_task_id: str) -> CloseOutcome:
    """Revoke a task and say how it ended; raise :class:`AgentTaskError` if it stays open.

    - ``revoked``: it was pending and is now revoked.
    - ``consumed``: Clerk answered 400 ``agent_task_cannot_be_revoked``: its URL
      was used (or a retried revoke already succeeded); the task can no longer
      sign anyone in, but a session it created may still be active.
    - ``gone``: Clerk does not know it (404), so nothing is left to close.
    """
    try:
        client.revoke(agent_task_id)
    except ClerkAPIError as error:
        if error.status == 400 and error.code == "agent_task_cannot_be_revoked":
            return "consumed"
        if error.status == 404 and error.code in (
            "agent_task_not_found",
            "agent_task_subject_not_found",
        ):
            return "gone"
        raise
    return "revoked"


@dataclass
class TaskRecord:
    """One task this run created."""

    task: AgentTask
    nodeid: str
    state: TaskState = "open"
    error: str | None = None


class TaskLedger:
    """Thread-safe list of the run's tasks and their states."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, TaskRecord] = {}

    def add(self, task: AgentTask, nodeid: str) -> TaskRecord:
        with self._lock:
            record = self._records[task.agent_task_id] = TaskRecord(task, nodeid)
            return record

    def mark(self, agent_task_id: str, state: TaskState, error: str | None = None) -> None:
        with self._lock:
            record = self._records[agent_task_id]
            record.state = state
            record.error = error

    def records(self, *states: TaskState) -> list[TaskRecord]:
        """The records in the given states (all when none is given), in creation order."""
        with self._lock:
            return [r for r in self._records.values() if not states or r.state in states]

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(record.state for record in self._records.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


def describe_error(error: BaseException) -> str:
    """A one-line description of why closing failed, safe to print."""
    if isinstance(error, AgentTaskError):
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return type(error).__name__
