"""Fixtures shared by the plugin's tests: a real emulator on loopback and
helpers to run an inner pytest that enables the plugin with ``-p``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_agenttask.emulator import ClerkEmulator

APP_URL = "http://localhost:8000/after-sign-in"


@pytest.fixture(scope="session")
def _shared_emulator() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as clerk:
        yield clerk


@pytest.fixture
def emulator(_shared_emulator: ClerkEmulator) -> Iterator[ClerkEmulator]:
    """The session's emulator, emptied of tasks, requests and faults for this test."""
    _shared_emulator.reset()
    yield _shared_emulator
    _shared_emulator.clear_faults()


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
    monkeypatch.setenv("PYTEST_ADDOPTS", "-W ignore::pytest.PytestAssertRewriteWarning")
    return pytester
