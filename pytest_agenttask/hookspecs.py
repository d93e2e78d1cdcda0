"""Hooks a ``conftest.py`` or plugin can implement to take part in the life of a task.

They are added in ``pytest_addhooks`` and always called with keyword arguments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .models import AgentTask


@pytest.hookspec
def pytest_agenttask_params(request: pytest.FixtureRequest, params: dict[str, Any]) -> None:
    """Change the parameters of a task about to be created, in place.

    ``params`` holds the keys of the ``agenttask`` marker (``user_id``,
    ``identifier``, ``redirect_url``, ``agent_name``, ``task_description``,
    ``session_max_duration``) already resolved from settings, markers and
    factory overrides. Every implementation is called; edit the dict, return
    nothing. The result is validated like a marker.
    """


@pytest.hookspec
def pytest_agenttask_created(request: pytest.FixtureRequest, task: AgentTask) -> None:
    """Called after a task was created for the test of ``request``."""


@pytest.hookspec
def pytest_agenttask_revoked(request: pytest.FixtureRequest, task: AgentTask) -> None:
    """Called after a pending task was revoked in the teardown of the test of ``request``.

    Not called for a task whose URL was already used (Clerk cannot revoke it; its
    session is closed instead), for one the session-end sweep revoked, nor with
    ``agenttask_close = background`` (the test's request is over by then).
    """
