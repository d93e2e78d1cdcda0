"""A Clerk emulator for Agent Tasks: Backend and Frontend API on loopback.

::

    from pytest_agenttask.emulator import ClerkEmulator

    with ClerkEmulator() as clerk:
        clerk.api_url           # Backend API base, "http://127.0.0.1:<port>/v1"
        clerk.frontend_api_url  # Frontend API base, where task URLs point
        clerk.secret_key        # the sk_test_ key it accepts
        clerk.jwt_key           # PEM public key of its RS256 session tokens
        clerk.default_user_id   # a seeded user (agent@example.com)
        clerk.active_sessions() # the sessions visiting task URLs opened
        clerk.inject_fault(path="/v1/agents/tasks", status=503, retry_after=1)

    # The network model: Clerk's cost on loopback, to count round trips by the clock.
    with ClerkEmulator(latency=0.05, connect_cost=0.1) as clerk:
        clerk.latency           # seconds added to every request (settable)
        clerk.connect_cost      # seconds added once per new TCP connection (settable)
        clerk.connections_opened, clerk.connection_count(api="backend")
        clerk.requests[-1].duration, clerk.requests[-1].new_connection

No pytest, no httpx. Signing session tokens needs cryptography and PyJWT, the
optional extra ``pytest-agenttask[emulator]``, imported only when an emulator
starts. ``python -m pytest_agenttask.emulator`` runs it as a command.
"""

from __future__ import annotations

from ._emulator import ClerkEmulator
from ._faults import Fault
from ._state import (
    EmulatedSession,
    EmulatedTask,
    EmulatedUser,
    RecordedRequest,
    SessionStatus,
    TaskStatus,
)

__all__ = [
    "ClerkEmulator",
    "EmulatedSession",
    "EmulatedTask",
    "EmulatedUser",
    "Fault",
    "RecordedRequest",
    "SessionStatus",
    "TaskStatus",
]
