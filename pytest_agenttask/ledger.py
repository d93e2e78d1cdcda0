"""A run's record of every task it created and how each one was closed."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .errors import AgentTaskError, ClerkAPIError

if TYPE_CHECKING:
    from .client import BackendClient
    from .models import AgentTask

__all__ = [
    "BackgroundCloser",
    "CloseOutcome",
    "Closer", "SessionRecord", "TaskLedger", "TaskRecord", "close_task"]

TaskState = Literal["open", "revoked", "consumed", "gone", "failed"]
SessionState = Literal["active", "revoked", "failed"]
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
    """One task this run created, and whom it signs in (to find its sessions)."""

    task: AgentTask
    nodeid: str
    user_id: str | None = None
    identifier: str | None = None
    state: TaskState = "open"
    error: str | None = None
    # True once the sessions a used task opened are known (and so tracked below).
    sessions_known: bool = False


@dataclass
class SessionRecord:
    """One Clerk session a task of this run opened."""

    session_id: str
    agent_task_id: str
    nodeid: str
    state: SessionState = "active"
    error: str | None = None


class TaskLedger:
    """Thread-safe record of the run's tasks and sessions and how each ended."""

    def __init__(self, on_change: Callable[[TaskLedger], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, TaskRecord] = {}
        self._sessions: dict[str, SessionRecord] = {}
        # Called (outside the lock) after every change, e.g. to keep a record
        # on disk that survives a killed run.
        self.on_change = on_change

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def add(
        self,
        task: AgentTask,
        nodeid: str,
        *,
        user_id: str | None = None,
        identifier: str | None = None,
    ) -> TaskRecord:
        with self._lock:
            record = TaskRecord(task, nodeid, user_id=user_id, identifier=identifier)
            self._records[task.agent_task_id] = record
        self._changed()
        return record

    def record(self, agent_task_id: str) -> TaskRecord:
        with self._lock:
            return self._records[agent_task_id]

    def mark(self, agent_task_id: str, state: TaskState, error: str | None = None) -> None:
        with self._lock:
            record = self._records[agent_task_id]
            record.state = state
            record.error = error
        self._changed()

    def add_session(self, session_id: str, agent_task_id: str) -> SessionRecord:
        """Record a session the task opened; the task is then known to be used."""
        with self._lock:
            task = self._records[agent_task_id]
            task.state, task.error, task.sessions_known = "consumed", None, True
            session = self._sessions.get(session_id)
            if session is None:
                session = SessionRecord(session_id, agent_task_id, task.nodeid)
                self._sessions[session_id] = session
        self._changed()
        return session

    def session(self, session_id: str) -> SessionRecord:
        with self._lock:
            return self._sessions[session_id]

    def mark_sessions_known(self, agent_task_id: str) -> None:
        with self._lock:
            self._records[agent_task_id].sessions_known = True
        self._changed()

    def mark_session(self, session_id: str, state: SessionState, error: str | None = None) -> None:
        with self._lock:
            session = self._sessions[session_id]
            session.state = state
            session.error = error
        self._changed()

    def records(self, *states: TaskState) -> list[TaskRecord]:
        """The task records in the given states (all when none is given), in creation order."""
        with self._lock:
            return [r for r in self._records.values() if not states or r.state in states]

    def sessions(self, *states: SessionState) -> list[SessionRecord]:
        """The session records in the given states (all when none is given)."""
        with self._lock:
            return [s for s in self._sessions.values() if not states or s.state in states]

    def unresolved(self) -> list[TaskRecord]:
        """Tasks still to close: pending ones, and used ones whose sessions are unknown."""
        with self._lock:
            return [
                r
                for r in self._records.values()
                if r.state in ("open", "failed") or (r.state == "consumed" and not r.sessions_known)
            ]

    def open_snapshot(self) -> dict[str, list[dict[str, str | None]]]:
        """What is still open, as plain JSON data (ids only: no URL, no ticket)."""
        with self._lock:
            tasks = [
                {
                    "agent_task_id": r.task.agent_task_id,
                    "agent_id": r.task.agent_id,
                    "user_id": r.user_id,
                    "identifier": r.identifier,
                    "state": r.state,
                }
                for r in self._records.values()
                if r.state in ("open", "failed") or (r.state == "consumed" and not r.sessions_known)
            ]
            sessions: list[dict[str, str | None]] = [
                {"session_id": s.session_id, "agent_task_id": s.agent_task_id}
                for s in self._sessions.values()
                if s.state != "revoked"
            ]
        return {"tasks": tasks, "sessions": sessions}

    def restore(self, snapshot: Mapping[str, Any], nodeid: str) -> None:
        """Take over what an earlier run's :meth:`open_snapshot` listed."""
        from .models import AgentTask

        for item in snapshot.get("tasks", []):
            task_id, agent_id = str(item["agent_task_id"]), str(item.get("agent_id") or "")
            task = AgentTask(agent_id=agent_id, agent_task_id=task_id)
            self.add(task, nodeid, user_id=item.get("user_id"), identifier=item.get("identifier"))
            if item.get("state") == "consumed":
                self.mark(task.agent_task_id, "consumed")
        for item in snapshot.get("sessions", []):
            task_id = str(item["agent_task_id"])
            if task_id not in self._records:
                self.add(AgentTask(agent_id="", agent_task_id=task_id), nodeid)
            self.add_session(str(item["session_id"]), task_id)

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(record.state for record in self._records.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


class Closer:
    """Closes what a run opened, keeping the ledger up to date.

    Each method returns a one-line problem, or None when all is closed.
    """

    def __init__(self, backend: BackendClient, ledger: TaskLedger) -> None:
        self._backend = backend
        self._ledger = ledger

    def close_task(self, record: TaskRecord) -> str | None:
        """Revoke a pending task; for a used one, find and revoke its sessions."""
        task_id = record.task.agent_task_id
        if record.state in ("open", "failed"):
            try:
                outcome = close_task(self._backend, task_id)
            except AgentTaskError as error:
                self._ledger.mark(task_id, "failed", describe_error(error))
                return f"could not revoke Agent Task {task_id}: {describe_error(error)}"
            self._ledger.mark(task_id, outcome)
        if record.state != "consumed" or record.sessions_known:
            return None
        # The test used the URL itself: the task is spent, but the session it
        # opened is active until it expires. Find it by its actor and close it.
        from .session import find_task_sessions

        try:
            session_ids = find_task_sessions(
                self._backend, task_id, user_id=record.user_id, identifier=record.identifier
            )
        except AgentTaskError as error:
            self._ledger.mark(task_id, "consumed", describe_error(error))
            return (
                f"could not find the sessions of used Agent Task {task_id}: {describe_error(error)}"
            )
        problems = [
            self.close_session(self._ledger.add_session(sid, task_id)) for sid in session_ids
        ]
        self._ledger.mark_sessions_known(task_id)
        return "; ".join(p for p in problems if p) or None

    def close_session(self, session: SessionRecord) -> str | None:
        if session.state == "revoked":
            return None
        from .session import revoke_session

        try:
            revoke_session(self._backend, session.session_id)
        except AgentTaskError as error:
            self._ledger.mark_session(session.session_id, "failed", describe_error(error))
            return f"could not revoke session {session.session_id}: {describe_error(error)}"
        self._ledger.mark_session(session.session_id, "revoked")
        return None

    def sweep(self) -> None:
        """Close whatever is still open: what a teardown failed to close or never reached."""
        for record in self._ledger.unresolved():
            self.close_task(record)
        for session in self._ledger.sessions("active", "failed"):
            self.close_session(session)


class BackgroundCloser:
    """Runs closing jobs one after another on a daemon thread, so that a test's
    revokes do not hold up the next test; :meth:`drain` waits for them all."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], object]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], object]) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="pytest-agenttask-closer", daemon=True
                )
                self._thread.start()
        self._jobs.put(job)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:  # noqa: S110 (jobs record their own failures in the ledger)
                pass
            finally:
                self._jobs.task_done()

    def drain(self, timeout: float) -> bool:
        """Wait until every job submitted has run; False if ``timeout`` ran out first."""
        import time

        deadline = time.monotonic() + timeout
        with self._jobs.all_tasks_done:
            while self._jobs.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._jobs.all_tasks_done.wait(remaining)
        return True


def describe_error(error: BaseException) -> str:
    """A one-line description of why closing failed, safe to print."""
    if isinstance(error, AgentTaskError):
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return type(error).__name__
