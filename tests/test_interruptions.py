"""Ctrl-C, SIGTERM and SIGKILL, sent to real pytest processes, leave nothing open."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_agenttask.emulator import ClerkEmulator

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SUITE = """
import os, pathlib, time
import pytest

READY = pathlib.Path(os.environ["READY_FILE"])

def wait_here():
    READY.write_text("ready")
    time.sleep(60)  # the signal arrives long before this ends

@pytest.fixture
def slow_setup(agent_task_factory, agent_session):
    agent_task_factory()
    wait_here()

@pytest.fixture
def slow_teardown(agent_task_factory, agent_session):
    agent_task_factory()
    yield
    wait_here()

def test_setup(slow_setup): pass

def test_call(agent_task_factory, agent_session):
    agent_task_factory()
    wait_here()

def test_teardown(slow_teardown): pass
"""


def run_until_ready(
    pytester: pytest.Pytester, args: list[str], phase: str, ready: Path
) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args, "-k", f"test_{phase}", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        env={**os.environ, "READY_FILE": str(ready)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the inner test never got ready"
        time.sleep(0.05)
    return process


@pytest.mark.parametrize("phase", ["setup", "call", "teardown"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_closes_everything(
    pytester: pytest.Pytester,
    session_args: list[str],
    emulator: ClerkEmulator,
    phase: str,
    signum: signal.Signals,
) -> None:
    pytester.makepyfile(SUITE)
    ready = pytester.path / "ready"
    process = run_until_ready(pytester, session_args, phase, ready)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    assert len(emulator.tasks) == 2
    assert len(emulator.sessions) == 1
    assert emulator.pending_tasks() == [], output
    assert emulator.active_sessions() == [], output
    assert "0 left open" in output


def test_a_killed_run_is_cleaned_up_by_the_next(
    pytester: pytest.Pytester, session_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(SUITE)
    ready = pytester.path / "ready"
    cache_args = [a for a in session_args if a != "-p no:cacheprovider"]
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", *cache_args, "-k", "test_call"],
        cwd=pytester.path,
        env={**os.environ, "READY_FILE": str(ready)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert process.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=10)
    assert len(emulator.pending_tasks()) == 1
    assert len(emulator.active_sessions()) == 1
    record = list((pytester.path / ".pytest_cache").rglob("agenttask-open/*.json"))
    assert len(record) == 1
    text = record[0].read_text()
    assert emulator.secret_key not in text
    assert "ticket" not in text

    pytester.makepyfile(test_later="def test_unrelated(): pass")
    result = pytester.runpytest_subprocess(*cache_args, "test_later.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["agenttask: closed what an earlier, killed run left open: 2 of 2 Agent Task(s), 1 session(s)"]
    )
    assert emulator.pending_tasks() == []
    assert emulator.active_sessions() == []
    assert list((pytester.path / ".pytest_cache").rglob("agenttask-open/*.json")) == []


def test_sigint_with_background_closing_still_closes_everything(
    pytester: pytest.Pytester, session_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(SUITE)
    ready = pytester.path / "ready"
    process = run_until_ready(
        pytester, [*session_args, "--agenttask-close=background"], "teardown", ready
    )
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output
    assert emulator.pending_tasks() == [], output
    assert emulator.active_sessions() == [], output
