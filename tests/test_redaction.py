"""Neither the secret key nor a task's ticket shows anywhere a run writes."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from pytest_agenttask.emulator import ClerkEmulator

FAILING_SUITE = """
import logging
import os
import pathlib

def test_fails_with_everything_in_locals(agent_task, agent_task_url, agenttask_client,
                                         agenttask_settings, agent_task_factory):
    pathlib.Path(os.environ["TICKET_FILE"]).write_text(str(agent_task_url))
    logging.getLogger("pytest_agenttask").warning("task %r url %r", agent_task, agent_task_url)
    print(agent_task, repr(agent_task_url), agenttask_client, agenttask_settings, agent_task_factory)
    url = agent_task_url
    assert url == "http://nowhere.test/"

def test_fails_comparing_tasks(agent_task):
    assert agent_task.url == agent_task.url + "x"

def test_clerk_error_in_the_test(agent_task_factory):
    agent_task_factory(user_id="user_missing")
"""


def test_failing_run_leaks_neither_key_nor_ticket(
    pytester: pytest.Pytester,
    clerk_args: list[str],
    emulator: ClerkEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TICKET_FILE", str(pytester.path / "ticket-url.txt"))
    pytester.makepyfile(FAILING_SUITE)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        *clerk_args,
        "-vv",
        "-l",
        "--showlocals",
        "--tb=long",
        "-rA",
        f"--junitxml={junit}",
        "--log-level=DEBUG",
        "-o",
        "junit_logging=all",
    )
    result.assert_outcomes(failed=3)
    url = (pytester.path / "ticket-url.txt").read_text()
    ticket = parse_qs(urlsplit(url).query)["ticket"][0]
    assert len(ticket) > 20
    output = result.stdout.str() + result.stderr.str()
    junit_text = junit.read_text()
    for text in (output, junit_text):
        assert ticket not in text
        assert emulator.secret_key not in text
        assert emulator.secret_key.removeprefix("sk_test_") not in text
    assert "ticket=***" in output  # the reprs were shown, masked
    assert "agent_task_url = 'http" in output  # -l showed the local, masked


def test_client_logs_hold_no_secret(
    caplog: pytest.LogCaptureFixture, emulator: ClerkEmulator
) -> None:
    from pytest_agenttask.client import BackendClient

    caplog.set_level(logging.DEBUG)
    with BackendClient(emulator.secret_key, api_url=emulator.api_url) as client:
        task = client.create(
            agent_name="a",
            task_description="d",
            redirect_url="http://localhost/",
            user_id=emulator.default_user_id,
        )
        client.revoke(task.agent_task_id)
        text = repr(client) + repr(task) + caplog.text
    assert task.url is not None
    ticket = parse_qs(urlsplit(task.url).query)["ticket"][0]
    assert ticket not in text
    assert emulator.secret_key not in text


def test_a_run_writes_no_files(pytester: pytest.Pytester) -> None:
    # Nothing of ours is written to disk in a normal run.
    pytester.makepyfile("def test_task(agent_task): pass")
    before = set(Path(pytester.path).rglob("*"))
    pytester.runpytest(
        "-p", "pytest_agenttask", "--agenttask-emulator", "-p", "no:cacheprovider"
    ).assert_outcomes(passed=1)
    created = {
        p for p in set(Path(pytester.path).rglob("*")) - before if "__pycache__" not in p.parts
    }
    assert created == set()
