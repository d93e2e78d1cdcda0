"""Calling the app's JSON routes as a signed-in user, with ``agent_session`` and
``async_agent_session`` (httpx clients on the app's origin)."""

from __future__ import annotations

import httpx
import pytest

from pytest_agenttask import AgentSession, AsyncAgentSession


def test_me(agent_session: AgentSession) -> None:
    me = agent_session.client.get("/api/me").json()
    assert me["user_id"] == agent_session.user_id
    assert me["session_id"] == agent_session.session_id


def test_notes_are_kept_per_user(agent_session: AgentSession) -> None:
    added = agent_session.client.post("/api/notes", json={"text": "buy milk"})
    assert added.status_code == 201
    assert agent_session.client.get("/api/notes").json() == {"notes": ["buy milk"]}


def test_any_client_can_send_the_session_token(agent_session: AgentSession, app_url: str) -> None:
    headers = {"Authorization": f"Bearer {agent_session.token()}"}
    response = httpx.get(f"{app_url}/api/me", headers=headers)
    assert response.json()["user_id"] == agent_session.user_id


@pytest.mark.asyncio
async def test_me_from_async_code(async_agent_session: AsyncAgentSession) -> None:
    response = await async_agent_session.client.get("/api/me")
    assert response.json()["user_id"] == async_agent_session.user_id
