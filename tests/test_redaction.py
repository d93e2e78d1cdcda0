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

def test_visits_its_own_url_and_fails(agent_task_url):
    import httpx
    with open(os.environ["TICKET_FILE"], "a") as file:
        file.write(" " + str(agent_task_url))
    response = httpx.get(agent_task_url)  # httpx logs the URL it requests
    assert response.status_code == 200, response.headers

def test_session_fails(agent_session):
    with open(os.environ["TICKET_FILE"], "a") as file:
        file.write(" " + str(agent_session.task.url))
    session = agent_session
    assert session.client.get("/nowhere").status_code == 418
"""


def test_failing_run_leaks_neither_key_nor_ticket(
    pytester: pytest.Pytester,
    session_args: list[str],
    emulator: ClerkEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TICKET_FILE", str(pytester.path / "ticket-url.txt"))
    pytester.makepyfile(FAILING_SUITE)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        *session_args,
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
    result.assert_outcomes(failed=5)
    urls = (pytester.path / "ticket-url.txt").read_text().split()
    tickets = [parse_qs(urlsplit(url).query)["ticket"][0] for url in urls]
    assert len(tickets) == 3
    assert all(len(ticket) > 20 for ticket in tickets)
    output = result.stdout.str() + result.stderr.str()
    junit_text = junit.read_text()
    assert "HTTP Request: GET" in junit_text  # httpx's log record of the visit was captured
    for text in (output, junit_text):
        for ticket in tickets:
            assert ticket not in text
        assert emulator.secret_key not in text
        assert emulator.secret_key.removeprefix("sk_test_") not in text
    assert "ticket=***" in output  # the reprs were shown, masked
    assert "agent_task_url = 'http" in output  # -l showed the local, masked


def test_reprs_of_our_objects_hold_no_secret(emulator: ClerkEmulator) -> None:
    import httpx

    from pytest_agenttask import ClerkAPIError, Settings
    from pytest_agenttask._redact import Secret
    from pytest_agenttask.client import BackendClient
    from pytest_agenttask.session import AgentSession, sign_in

    with (
        BackendClient(emulator.secret_key, api_url=emulator.api_url) as client,
        httpx.Client() as http,
    ):
        task = client.create(
            agent_name="a",
            task_description="d",
            redirect_url="http://localhost:8000/",
            user_id=emulator.default_user_id,
        )
        assert task.url is not None
        ticket = parse_qs(urlsplit(task.url).query)["ticket"][0]
        signed = sign_in(task, http=http)
        session = AgentSession(task, signed, client)
        try:
            client.revoke(task.agent_task_id)
        except ClerkAPIError as error:
            api_error = error
        settings = Settings(secret_key=Secret(emulator.secret_key))
        objects = [
            client,
            task,
            task.url,
            signed,
            session,
            settings,
            api_error,
            emulator,
            Secret(emulator.secret_key),
        ]
        texts = [repr(o) for o in objects]
        # str() of a task URL is the URL itself (a browser needs it); of the rest, masked.
        texts += [str(o) for o in objects if o is not task.url]
        texts += [f"{o}" for o in objects if o is not task.url]
        session.close()
    for text in texts:
        assert ticket not in text
        assert emulator.secret_key not in text
        assert signed.session_token not in text


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
