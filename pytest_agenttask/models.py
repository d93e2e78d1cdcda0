"""What the Backend API returns, as plain typed values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._redact import mask_tickets
from .errors import ClerkTransportError

__all__ = ["AgentTask", "TaskURL"]


class TaskURL(str):
    """A task URL: a ``str`` whose ``repr`` masks the one-time ticket.

    It compares, hashes and formats as the full URL (a browser needs it), but
    pytest's ``-l``/``--showlocals`` and assertion reprs show ``ticket=***``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_tickets(str.__str__(self)))

    @property
    def masked(self) -> str:
        """The URL with its ticket replaced by ``***``, safe to print."""
        return mask_tickets(str.__str__(self))


@dataclass(frozen=True)
class AgentTask:
    """An Agent Task as Clerk returned it.

    ``url`` is only known for a task this run created (Clerk returns it on
    create only); its ``repr`` never shows the ticket.
    """

    agent_id: str
    agent_task_id: str
    url: TaskURL | None = field(default=None)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def task_id(self) -> str:
        """Deprecated alias Clerk still sends; same as :attr:`agent_task_id`."""
        return self.agent_task_id

    @classmethod
    def from_json(cls, data: object, *, where: str = "Clerk") -> AgentTask:
        """Build from a Backend API ``agent_task`` object, checking its shape."""
        if not isinstance(data, Mapping):
            raise ClerkTransportError(
                f"{where} answered with JSON that is not an object ({type(data).__name__})",
                retryable=False,
            )
        if data.get("object") != "agent_task":
            raise ClerkTransportError(
                f"{where} answered with object {data.get('object')!r}, expected 'agent_task'",
                retryable=False,
            )
        task_id = data.get("agent_task_id", data.get("task_id"))
        agent_id = data.get("agent_id")
        for name, value in (("agent_task_id", task_id), ("agent_id", agent_id)):
            if not isinstance(value, str) or not value:
                raise ClerkTransportError(
                    f"{where} answered an agent_task without a string {name}", retryable=False
                )
        url = data.get("url")
        if url is not None and not isinstance(url, str):
            raise ClerkTransportError(
                f"{where} answered an agent_task whose url is not a string", retryable=False
            )
        assert isinstance(task_id, str)
        assert isinstance(agent_id, str)
        redacted = {
            key: mask_tickets(value) if key == "url" and isinstance(value, str) else value
            for key, value in data.items()
        }
        return cls(
            agent_id=agent_id,
            agent_task_id=task_id,
            url=TaskURL(url) if url is not None else None,
            raw=redacted,
        )
