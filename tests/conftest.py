"""Fixtures shared by the plugin's tests: a real emulator on loopback and
helpers to run an inner pytest that enables the plugin with ``-p``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpcore  # noqa: F401 (see below)
import pytest

from pytest_agenttask.emulator import ClerkEmulator

# Pytester's in-process runs unload the modules first imported during the run.
# httpx maps httpcore's exceptions through classes it caches on first use; if
# httpcore were first imported inside an inner run, the next run would raise
# classes of a re-imported httpcore that httpx no longer recognises. Importing
# it here, in the outer process, keeps one httpcore for every run.

APP_URL = "http://localhost:8000/after-sign-in"


@pytest.fixture(scope="session")
def _shared_emulator() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as clerk:
        yield clerk


@pytest.fixture
def emulator(_shared_emulator: ClerkEmulator) -> Iterator[ClerkEmulator]:
    """The session's emulator, emptied of tasks, requests and faults for this test."""
    yield from _fresh(_shared_emulator)


@pytest.fixture(scope="module")
def _module_emulator() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as clerk:
        yield clerk


@pytest.fixture
def clerk(_module_emulator: ClerkEmulator) -> Iterator[ClerkEmulator]:
    """An emulator of this test module's own (its users are the module's), emptied
    for this test; for the emulator's own tests."""
    yield from _fresh(_module_emulator)


def _fresh(emulator: ClerkEmulator) -> Iterator[ClerkEmulator]:
    emulator.reset()
    yield emulator
    emulator.session_token_lifetime = 60.0
    emulator.rate_limit = False
    emulator.clear_faults()
    emulator.check_errors()  # re-raise here what failed on the emulator's threads


@pytest.fixture
def clerk_args(
    emulator: ClerkEmulator, monkeypatch: pytest.MonkeyPatch, pytester: pytest.Pytester
) -> list[str]:
    """Arguments pointing an inner run at the emulator as if it were Clerk,
    with the key in the environment, as a user with a Clerk account runs it."""
    monkeypatch.setenv("CLERK_SECRET_KEY", emulator.secret_key)
    pytester.makeini("[pytest]\n")
    return [
        "-p",
        "pytest_agenttask",
        f"--agenttask-api-url={emulator.api_url}",
        f"--agenttask-user-id={emulator.default_user_id}",
        f"--agenttask-redirect-url={APP_URL}",
        "--agenttask-retries=2",
        "--agenttask-timeout=5",
    ]


@pytest.fixture(autouse=True)
def _no_key_from_the_outside(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's real key must never leak into the inner runs.
    monkeypatch.delenv("CLERK_SECRET_KEY", raising=False)


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # This outer process imported pytest_agenttask before the in-process inner
    # runs load it with -p, so pytest cannot rewrite its asserts and warns.
    # Users never see that (-p is their first import of the plugin). Set here,
    # after Pytester has cleared PYTEST_ADDOPTS for its runs.
    # pytest-asyncio and pytest-playwright are installed for the tests that need
    # them; every other inner run leaves them out, as most users' suites would.
    monkeypatch.setenv(
        "PYTEST_ADDOPTS",
        "-W ignore::pytest.PytestAssertRewriteWarning -p no:asyncio -p no:playwright",
    )
    return pytester


@pytest.fixture
def app_url(_shared_emulator: ClerkEmulator) -> Iterator[str]:
    """A web app protected by the official SDK, trusting the emulator's key."""
    from .protected_app import serve_protected_app

    with serve_protected_app(_shared_emulator.jwt_key) as url:
        yield url


@pytest.fixture
def session_args(clerk_args: list[str], app_url: str) -> list[str]:
    """``clerk_args`` with the redirect URL on the protected app."""
    return [*clerk_args, f"--agenttask-redirect-url={app_url}/dashboard?tab=home"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

BROWSER_CONFTEST = f"""
import pytest

@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    # Debian's chromium, not a browser downloaded by Playwright (none can be here).
    return {{
        **browser_type_launch_args,
        "executable_path": {CHROMIUM!r},
        "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"],
    }}
"""


@pytest.fixture
def browser_conftest(pytester: pytest.Pytester) -> None:
    """An inner conftest that points pytest-playwright at the system's Chromium."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("no chromium on this machine: apt-get install chromium")
    pytester.makeconftest(BROWSER_CONFTEST)
