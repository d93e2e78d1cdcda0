"""Signing in a browser: a task URL in pytest-playwright's ``page``, ``agent_page``,
and ``agent_task_factory`` for two users at once."""

from __future__ import annotations

from playwright.sync_api import Browser, Page, expect

from pytest_agenttask import AgentTaskFactory, Settings


def test_a_task_url_signs_the_browser_in(
    page: Page, agent_task_url: str, agenttask_settings: Settings
) -> None:
    page.goto(agent_task_url)  # Clerk signs the user in and redirects to the app
    expect(page).to_have_url(agenttask_settings.redirect_url or "")
    expect(page.locator("#who")).to_contain_text("Signed in as user_")


def test_agent_page_is_already_signed_in(agent_page: Page, app_url: str) -> None:
    expect(agent_page.locator("#who")).to_contain_text("Signed in as user_")
    agent_page.goto(f"{app_url}/settings")  # the session cookie goes along
    expect(agent_page.locator("h1")).to_have_text("Settings")


def test_two_users_side_by_side(
    agent_task_factory: AgentTaskFactory, second_user: str, browser: Browser
) -> None:
    tasks = [agent_task_factory(), agent_task_factory(identifier=second_user)]
    shown = []
    for task in tasks:
        context = browser.new_context()  # one cookie jar per user
        page = context.new_page()
        page.goto(str(task.url))
        shown.append(page.locator("#who").inner_text())
        context.close()
    assert all(text.startswith("Signed in as user_") for text in shown)
    assert shown[0] != shown[1]
