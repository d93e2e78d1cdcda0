"""Fixtures of the example suite: the app served where ``agenttask_redirect_url`` points,
a second user, a real browser, and two of the plugin's hooks."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from clerk_backend_api.security.types import AuthenticateRequestOptions
from users import SECOND_USER, SECOND_USER_ENV
from webapp import create_app
from werkzeug.serving import make_server

from pytest_agenttask import AgentTask, Settings

log = logging.getLogger("examples")


# -- the app -----------------------------------------------------------------------


def clerk_options(settings: Settings, request: pytest.FixtureRequest) -> AuthenticateRequestOptions:
    """How the app verifies session tokens: the emulator's public key, or Clerk's
    JWKS through the secret key (as an app deployed against Clerk does)."""
    if settings.emulator:
        emulator = request.getfixturevalue("clerk_emulator")
        return AuthenticateRequestOptions(jwt_key=emulator.jwt_key)
    # Without a key everyone is signed out, and the plugin skips the tests that need Clerk.
    return AuthenticateRequestOptions(secret_key=os.environ.get(settings.secret_key_env))


@pytest.fixture(scope="session", autouse=True)
def app_url(agenttask_settings: Settings, request: pytest.FixtureRequest) -> Iterator[str]:
    """Serve the app on 127.0.0.1 at the port of ``agenttask_redirect_url``; its origin."""
    redirect = urlsplit(agenttask_settings.redirect_url or "")
    if redirect.scheme != "http" or redirect.hostname is None:
        pytest.fail("set agenttask_redirect_url to http://localhost:<port>/... in pytest.ini")
    app = create_app(clerk_options(agenttask_settings, request))
    try:
        server = make_server("127.0.0.1", redirect.port or 80, app, threaded=True)
    except OSError as error:
        pytest.fail(
            f"cannot serve the app at {redirect.netloc} ({error}): free the port "
            "or change agenttask_redirect_url in pytest.ini"
        )
    thread = threading.Thread(target=server.serve_forever, name="example-app", daemon=True)
    thread.start()
    yield f"{redirect.scheme}://{redirect.netloc}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def second_user(agenttask_settings: Settings, request: pytest.FixtureRequest) -> str:
    """A second user's identifier: created in the emulator, configured against Clerk."""
    if agenttask_settings.emulator:
        request.getfixturevalue("clerk_emulator").add_user(email_address=SECOND_USER)
    elif not os.environ.get(SECOND_USER_ENV):
        pytest.skip(f"no second user: set {SECOND_USER_ENV} to a second user's email address")
    return SECOND_USER


# -- the browser -------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Drive the system's Chromium (Debian's ``chromium``) when there is one.

    With a browser installed by ``playwright install chromium`` this override is
    unnecessary: delete it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        return browser_type_launch_args
    return {
        **browser_type_launch_args,
        "executable_path": chromium,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


# -- the plugin's hooks ------------------------------------------------------------


def pytest_agenttask_params(request: pytest.FixtureRequest, params: dict[str, Any]) -> None:
    """Name the agent after the test module (Clerk derives a stable agent id from it)."""
    params["agent_name"] = f"{params['agent_name']}/{request.node.module.__name__}"


def pytest_agenttask_created(request: pytest.FixtureRequest, task: AgentTask) -> None:
    """Log every task (``--log-cli-level=INFO`` shows it; the URL's ticket is masked)."""
    log.info("%s: created %r", request.node.nodeid, task)
