"""What a visitor who is not signed in sees: no Agent Task, no Clerk involved."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page, expect


def test_the_home_page_is_public(app_url: str) -> None:
    response = httpx.get(f"{app_url}/")
    assert response.status_code == 200
    assert "Welcome" in response.text


def test_a_protected_page_redirects_to_sign_in(app_url: str) -> None:
    response = httpx.get(f"{app_url}/dashboard")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sign-in?redirect_url=")


def test_a_protected_json_route_answers_401(app_url: str) -> None:
    response = httpx.get(f"{app_url}/api/notes")
    assert response.status_code == 401
    assert response.json() == {"error": "signed out"}


def test_nobody_is_signed_in(app_url: str) -> None:
    assert httpx.get(f"{app_url}/api/me").json() == {"signed_in": False}


def test_a_browser_lands_on_the_sign_in_page(page: Page, app_url: str) -> None:
    page.goto(f"{app_url}/dashboard")
    expect(page).to_have_url(f"{app_url}/sign-in?redirect_url={app_url}/dashboard")
    expect(page.locator("#who")).to_have_text("Signed out")


def test_a_forged_handshake_is_refused(app_url: str) -> None:
    response = httpx.get(f"{app_url}/dashboard?__clerk_handshake=forged")
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
