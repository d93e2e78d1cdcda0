"""pytest-agenttask: Clerk Agent Task fixtures for pytest, with a loopback Clerk emulator.

Enable it with ``pytest -p pytest_agenttask``. Importing the package opens no
socket and does not import httpx; the client and the emulator load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import (
    AgentTaskError,
    AgentTaskWarning,
    ClerkAPIError,
    ClerkTransportError,
    ConfigurationError,
)
from .models import AgentTask, TaskURL
from .settings import Settings

if TYPE_CHECKING:
    from .client import AsyncBackendClient, BackendClient
    from .plugin import AgentTaskFactory
    from .session import AgentSession, AsyncAgentSession

__all__ = [
    "AgentSession",
    "AgentTask",
    "AgentTaskError",
    "AgentTaskFactory",
    "AgentTaskWarning",
    "AsyncAgentSession",
    "AsyncBackendClient",
    "BackendClient",
    "ClerkAPIError",
    "ClerkTransportError",
    "ConfigurationError",
    "Settings",
    "TaskURL",
]

# `pytest -p pytest_agenttask` registers this module; pytest then loads the
# hooks and fixtures from the plugin module named here.
pytest_plugins = ["pytest_agenttask.plugin"]

_LAZY = {
    "AgentSession": "session",
    "AsyncAgentSession": "session",
    "AsyncBackendClient": "client",
    "BackendClient": "client",
    "AgentTaskFactory": "plugin",
}


def __getattr__(name: str) -> Any:
    # The client and sessions pull in httpx: import it only when someone asks for it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
