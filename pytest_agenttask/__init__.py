"""pytest-agenttask: Clerk Agent Task fixtures for pytest, with a loopback Clerk emulator.

Enable it with ``pytest -p pytest_agenttask``. Importing the package opens no
socket and does not import httpx; the client, the sessions and the emulator load
on first use.
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
from .plugin import AgentTaskFactory
from .settings import Settings

if TYPE_CHECKING:
    from .client import AsyncBackendClient, BackendClient
    from .models import AgentTask, TaskURL
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

# `pytest -p pytest_agenttask` registers this module as the plugin, so its hooks
# and fixtures are here (and `-p no:pytest_agenttask` turns every one of them off).
from .plugin import (  # noqa: F401 (found by pytest, not used here)
    agent_page,
    agent_session,
    agent_task,
    agent_task_factory,
    agent_task_url,
    agenttask_client,
    agenttask_settings,
    async_agent_session,
    clerk_emulator,
    pytest_addhooks,
    pytest_addoption,
    pytest_assertrepr_compare,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_report_header,
    pytest_runtest_setup,
    pytest_sessionfinish,
    pytest_sessionstart,
    pytest_terminal_summary,
    pytest_testnodedown,
    pytest_unconfigure,
)

_LAZY = {
    "AgentTask": "models",
    "TaskURL": "models",
    "AgentSession": "session",
    "AsyncAgentSession": "session",
    "AsyncBackendClient": "client",
    "BackendClient": "client",
}


def __getattr__(name: str) -> Any:
    # The client and sessions pull in httpx: import them only when someone asks.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
