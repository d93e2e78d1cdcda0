"""The ``agenttask`` marker: another user and another landing page for one test."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect
from users import SECOND_USER

from pytest_agenttask import Settings

# Marker arguments are fixed at import time: keep this URL on the app's origin
# (the host and port of agenttask_redirect_url in pytest.ini).
SETTINGS_PAGE = "http://localhost:8765/settings?tab=profile"


@pytest.mark.usefixtures("second_user")  # created in the emulator, or configured
@pytest.mark.agenttask(identifier=SECOND_USER, redirect_url=SETTINGS_PAGE)
def test_the_marker_picks_the_user_and_the_page(
    page: Page, agent_task_url: str, app_url: str, agenttask_settings: Settings
) -> None:
    assert SETTINGS_PAGE.startswith(f"{app_url}/"), "move SETTINGS_PAGE along with the app"
    page.goto(agent_task_url)
    expect(page).to_have_url(SETTINGS_PAGE)  # its own query kept, the handshake's removed
    expect(page.locator("#who")).to_contain_text("Signed in as user_")
    # not the suite's default user (agenttask_user_id, or the emulator's seeded user)
    expect(page.locator("#who")).not_to_have_text(f"Signed in as {agenttask_settings.user_id}")
