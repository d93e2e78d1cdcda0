"""Signed-in sessions: agent_session, async_agent_session and agent_page, against an
app protected by the official SDK, with the emulator as Clerk."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from pytest_agenttask.emulator import ClerkEmulator


def backend_requests(emulator: ClerkEmulator, method: str, path_prefix: str) -> int:
    return sum(
        1
        for r in emulator.requests
        if r.api == "backend" and r.method == method and r.path.startswith(path_prefix)
    )


def assert_nothing_left_open(emulator: ClerkEmulator) -> None:
    assert emulator.pending_tasks() == []
    assert emulator.active_sessions() == []


def test_agent_session_is_seen_as_the_user_even_after_its_first_token_expired(
    pytester: pytest.Pytester, session_args: list[str], emulator: ClerkEmulator
) -> None:
    emulator.session_token_lifetime = 2.0
    pytester.makepyfile(
        """
        import time

        def test_me(agent_session):
            response = agent_session.client.get("/api/me")
            assert response.status_code == 200, response.text
            assert response.json() == {"user_id": agent_session.user_id,
                                       "session_id": agent_session.session_id}
            first = agent_session.token()
            time.sleep(2.5)  # past the first token's expiry
            response = agent_session.client.get("/api/me")
            assert response.status_code == 200, response.text
            assert agent_session.token() != first
            assert agent_session.client.get("/dashboard").text.count("Signed in as") == 1
        """
    )
    result = pytester.runpytest(*session_args)
    result.assert_outcomes(passed=1)
    [task] = emulator.tasks
    [session] = emulator.sessions
    assert session.user_id == emulator.default_user_id
    assert session.actor == {"type": "agent", "sub": task.agent_id, "task_id": task.agent_task_id}
    assert session.status == "revoked"
    assert task.status == "consumed"
    assert_nothing_left_open(emulator)
    assert backend_requests(emulator, "POST", "/v1/sessions/") >= 2  # a refresh and the revoke
    result.stdout.fnmatch_lines(
        [
            "agenttask: 1 Agent Task(s) created: 0 revoked, 1 used to sign in; 1 of 1 session(s) revoked; 0 left open"
        ]
    )


def test_agent_session_costs_two_backend_requests(
    pytester: pytest.Pytester, session_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(
        """
        def test_me(agent_session):
            assert agent_session.client.get("/api/me").status_code == 200
        """
    )
    pytester.runpytest(*session_args).assert_outcomes(passed=1)
    backend = [
        (r.method, r.path.rsplit("/", 1)[-1]) for r in emulator.requests if r.api == "backend"
    ]
    # create the task, revoke the session: no token minted (the handshake's is fresh),
    # no session lookup (the token names it), no task revoke (bound to answer 400).
    assert backend == [("POST", "tasks"), ("POST", "revoke")]
    assert emulator.request_count(api="frontend") == 1
    assert_nothing_left_open(emulator)


ASYNC_TESTS = """
import pytest

async def call_me(session):
    async with session.client as client:
        response = await client.get("/api/me")
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == session.user_id
    assert (await session.token()).count(".") == 2

{marker}
async def test_async(async_agent_session):
    await call_me(async_agent_session)
"""


@pytest.mark.parametrize(
    ("plugin_args", "marker", "passed"),
    [
        (["-p", "asyncio", "-p", "no:anyio"], "@pytest.mark.asyncio", 1),
        (["-p", "anyio"], "@pytest.mark.anyio", 2),  # on asyncio and on trio
    ],
    ids=["pytest-asyncio", "anyio"],
)
def test_async_agent_session(
    pytester: pytest.Pytester,
    session_args: list[str],
    emulator: ClerkEmulator,
    plugin_args: list[str],
    marker: str,
    passed: int,
) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(params=["asyncio", "trio"])
        def anyio_backend(request):
            return request.param
        """
    )
    if tuple(int(part) for part in version("pytest-asyncio").split(".")[:2]) >= (0, 24):
        pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(ASYNC_TESTS.format(marker=marker))
    # In a subprocess: an event loop the async plugin leaves to the garbage
    # collector would otherwise be blamed on a later test of this outer run.
    result = pytester.runpytest_subprocess(*session_args, *plugin_args)
    result.assert_outcomes(passed=passed)
    assert len(emulator.sessions) == passed
    assert_nothing_left_open(emulator)


def test_a_url_the_test_used_itself_has_its_session_closed(
    pytester: pytest.Pytester, session_args: list[str], emulator: ClerkEmulator
) -> None:
    emulator.add_user(email_address="used-url@example.com")
    pytester.makepyfile(
        """
        import httpx
        import pytest

        def test_by_user_id(agent_task_url):
            assert httpx.get(agent_task_url).status_code == 307

        @pytest.mark.agenttask(identifier="used-url@example.com")
        def test_by_identifier(agent_task_url):
            assert httpx.get(agent_task_url).status_code == 307
        """
    )
    result = pytester.runpytest(*session_args)
    result.assert_outcomes(passed=2)
    assert [s.status for s in emulator.sessions] == ["revoked", "revoked"]
    assert_nothing_left_open(emulator)


def test_interrupted_run_closes_sessions_too(
    pytester: pytest.Pytester, session_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(
        """
        def test_first(agent_session):
            raise KeyboardInterrupt
        """
    )
    result = pytester.runpytest_subprocess(*session_args)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert len(emulator.sessions) == 1
    assert_nothing_left_open(emulator)


def test_session_revoke_failure_is_reported_and_swept(
    pytester: pytest.Pytester, session_args: list[str], emulator: ClerkEmulator
) -> None:
    emulator.inject_fault(path=r"/v1/sessions/[^/]+/revoke", status=503, times=3)
    pytester.makepyfile("def test_one(agent_session): pass")
    result = pytester.runpytest(*session_args)
    result.assert_outcomes(passed=1, errors=1)
    [session] = emulator.sessions
    result.stdout.fnmatch_lines([f"*could not revoke session {session.session_id}*503*"])
    assert_nothing_left_open(emulator)


def test_agent_page_lands_signed_in(
    pytester: pytest.Pytester,
    session_args: list[str],
    emulator: ClerkEmulator,
    browser_conftest: None,
) -> None:
    pytester.makepyfile(
        """
        def test_page(agent_page, agent_task):
            assert "/dashboard?tab=home" in agent_page.url
            assert "__clerk" not in agent_page.url
            assert agent_page.locator("#who").inner_text().startswith("Signed in as user_")

        def test_url_in_a_plain_page_is_signed_out_for_a_python_app(page, agent_task_url):
            # Without the plugin resolving the handshake, a Python-only app sees no
            # __session cookie: this is why agent_page exists.
            page.goto(agent_task_url)
            assert page.locator("#who").inner_text() == "Signed out"
        """
    )
    # In a subprocess: Playwright's driver leaves a pipe for the garbage collector,
    # which the outer run's unraisable-exception check would blame on this test.
    result = pytester.runpytest_subprocess(*session_args, "-p", "playwright")
    result.assert_outcomes(passed=2)
    assert_nothing_left_open(emulator)


def test_agent_page_without_pytest_playwright_says_what_to_install(
    pytester: pytest.Pytester, session_args: list[str]
) -> None:
    pytester.makepyfile("def test_page(agent_page): pass")
    result = pytester.runpytest(*session_args, "-p", "no:playwright")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*agent_page needs pytest-playwright: pip install pytest-playwright*"]
    )


SHARED_A = """
import os
import pytest

def record(session):
    with open(os.environ["SESSIONS_FILE"], "a") as file:
        file.write(f"{__name__} {session.session_id}\\n")

def test_one(agent_session):
    assert agent_session.client.get("/api/me").status_code == 200
    record(agent_session)

def test_two(agent_session):
    assert agent_session.client.get("/api/me").status_code == 200
    record(agent_session)

@pytest.mark.agenttask(identifier="shared-other@example.com")
def test_other_user(agent_session):
    assert agent_session.client.get("/api/me").json()["user_id"] == agent_session.user_id
    record(agent_session)
"""

SHARED_B = """
from test_shared_a import record

def test_three(agent_session):
    assert agent_session.client.get("/api/me").status_code == 200
    record(agent_session)
"""


@pytest.mark.parametrize(("scope", "sign_ins"), [("function", 4), ("module", 3), ("session", 2)])
def test_session_scope_shares_sign_ins(
    pytester: pytest.Pytester,
    session_args: list[str],
    emulator: ClerkEmulator,
    monkeypatch: pytest.MonkeyPatch,
    scope: str,
    sign_ins: int,
) -> None:
    if "shared-other@example.com" not in {u.email_address for u in emulator.users}:
        emulator.add_user(email_address="shared-other@example.com")
    sessions_file = pytester.path / "sessions.txt"
    monkeypatch.setenv("SESSIONS_FILE", str(sessions_file))
    pytester.makepyfile(test_shared_a=SHARED_A, test_shared_b=SHARED_B)
    result = pytester.runpytest(*session_args, f"--agenttask-session-scope={scope}")
    result.assert_outcomes(passed=4)
    seen = [line.split() for line in sessions_file.read_text().splitlines()]
    assert len({session_id for _, session_id in seen}) == sign_ins
    assert len(emulator.sessions) == sign_ins
    assert emulator.request_count(api="frontend") == sign_ins
    if scope != "function":
        assert seen[0][1] == seen[1][1]  # test_one and test_two shared one sign-in
        assert seen[2][1] != seen[0][1]  # another user: its own
    assert_nothing_left_open(emulator)


def test_shared_agent_page_signs_in_once(
    pytester: pytest.Pytester,
    session_args: list[str],
    emulator: ClerkEmulator,
    browser_conftest: None,
) -> None:
    pytester.makepyfile(
        """
        def test_first(agent_page):
            assert agent_page.locator("#who").inner_text().startswith("Signed in as user_")

        def test_second(agent_page):
            assert agent_page.locator("#who").inner_text().startswith("Signed in as user_")
            assert "/dashboard?tab=home" in agent_page.url
        """
    )
    result = pytester.runpytest_subprocess(
        *session_args, "-p", "playwright", "--agenttask-session-scope=session"
    )
    result.assert_outcomes(passed=2)
    assert len(emulator.sessions) == 1
    assert_nothing_left_open(emulator)
