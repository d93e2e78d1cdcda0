"""The fixtures, the marker and the hooks, in inner runs against the emulator."""

from __future__ import annotations

import pytest

from pytest_agenttask.emulator import ClerkEmulator

from .conftest import APP_URL


def statuses(emulator: ClerkEmulator) -> list[str]:
    return [task.status for task in emulator.tasks]


def test_agent_task_and_url(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(
        """
        import re
        from pytest_agenttask import AgentTask, TaskURL

        def test_task(agent_task, agent_task_url):
            assert isinstance(agent_task, AgentTask)
            assert re.fullmatch(r"agttsk_[0-9A-Za-z]{27}", agent_task.agent_task_id)
            assert agent_task.agent_id.startswith("agt_")
            assert agent_task.task_id == agent_task.agent_task_id
            assert isinstance(agent_task_url, TaskURL) and agent_task_url == agent_task.url
            assert "/v1/agents/tasks?ticket=" in agent_task_url
        """
    )
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(passed=1)
    [task] = emulator.tasks
    assert task.status == "revoked"
    assert task.user_id == emulator.default_user_id
    assert task.redirect_url == APP_URL
    assert task.agent_name == "pytest-agenttask"
    assert task.task_description == "test_agent_task_and_url.py::test_task"
    assert task.session_max_duration_in_seconds == 1800
    result.stdout.fnmatch_lines(["agenttask: 1 Agent Task(s) created: 1 revoked; 0 left open"])


def test_factory_makes_several_tasks_for_different_users(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    other = emulator.add_user(email_address="grace@example.com")
    pytester.makepyfile(
        """
        def test_two_users(agent_task_factory):
            first = agent_task_factory()
            second = agent_task_factory(identifier="grace@example.com", agent_name="helper",
                                        session_max_duration=120, task_description="checkout")
            assert first.agent_task_id != second.agent_task_id
            assert len(agent_task_factory.tasks) == 2
        """
    )
    pytester.runpytest(*clerk_args).assert_outcomes(passed=1)
    first, second = emulator.tasks
    assert (first.user_id, second.user_id) == (emulator.default_user_id, other)
    assert (second.agent_name, second.session_max_duration_in_seconds, second.task_description) == (
        "helper",
        120,
        "checkout",
    )
    assert statuses(emulator) == ["revoked", "revoked"]


def test_factory_refuses_unknown_keywords(pytester: pytest.Pytester, clerk_args: list[str]) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_agenttask import ConfigurationError

        def test_typo(agent_task_factory):
            with pytest.raises(ConfigurationError, match="unknown keyword 'usr_id'"):
                agent_task_factory(usr_id="user_1")
            with pytest.raises(ConfigurationError, match="redirect_url='/x': expected an absolute"):
                agent_task_factory(redirect_url="/x")
        """
    )
    pytester.runpytest(*clerk_args).assert_outcomes(passed=1)


def test_marker_levels_closest_wins(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    emulator.add_user(email_address="mod@example.com")
    cls_user = emulator.add_user(email_address="cls@example.com")
    pytester.makepyfile(
        f"""
        import pytest

        pytestmark = pytest.mark.agenttask(identifier="mod@example.com", agent_name="module-agent")

        def test_module_level(agent_task): pass

        @pytest.mark.agenttask(user_id="{cls_user}", redirect_url="http://localhost:9000/cls")
        class TestClass:
            def test_class_level(self, agent_task): pass

            @pytest.mark.agenttask(agent_name="test-agent", session_max_duration=300)
            def test_test_level(self, agent_task): pass
        """
    )
    pytester.runpytest(*clerk_args, "--agenttask-agent-name=cli-agent").assert_outcomes(passed=3)
    module, klass, test = emulator.tasks
    assert module.agent_name == "module-agent"  # marker beats the CLI
    assert module.redirect_url == APP_URL
    assert klass.user_id == cls_user
    assert klass.redirect_url == "http://localhost:9000/cls"
    assert klass.agent_name == "module-agent"
    assert (test.agent_name, test.session_max_duration_in_seconds, test.user_id) == (
        "test-agent",
        300,
        cls_user,
    )


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('usr_id="user_1"', "unknown keyword 'usr_id'"),
        ('"user_1"', "takes keywords only"),
        (
            'redirect_url="dashboard"',
            "redirect_url='dashboard': expected an absolute http:// or https:// URL",
        ),
        ("session_max_duration=-1", "session_max_duration=-1: expected a whole number of seconds"),
        ("agent_name=42", "agent_name=42: expected a string, got int"),
        ('user_id="u", identifier="a@b.c"', "both user_id and identifier given"),
    ],
)
def test_bad_marker_stops_the_run_naming_the_test(
    pytester: pytest.Pytester, clerk_args: list[str], marker: str, message: str
) -> None:
    pytester.makepyfile(
        f"""
        import pytest

        def test_fine(): pass

        @pytest.mark.agenttask({marker})
        def test_marked(): pass
        """
    )
    result = pytester.runpytest(*clerk_args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: pytest-agenttask: @pytest.mark.agenttask on test_bad_marker_stops_the_run_naming_the_test.py::test_marked: {message}*"
        ]
    )


def test_no_user_and_no_redirect_fail_clearly(
    pytester: pytest.Pytester, emulator: ClerkEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", emulator.secret_key)
    pytester.makepyfile(
        """
        import pytest

        def test_no_user(agent_task): pass

        @pytest.mark.agenttask(user_id="user_x")
        def test_no_redirect(agent_task): pass
        """
    )
    result = pytester.runpytest("-p", "pytest_agenttask", f"--agenttask-api-url={emulator.api_url}")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "*agent_task: test_no_user_and_no_redirect_fail_clearly.py::test_no_user: no user to sign in; set agenttask_user_id*",
            "*agent_task: *::test_no_redirect: no redirect URL; set agenttask_redirect_url*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    assert emulator.tasks == []


def test_clerk_errors_reach_the_test_as_one_clear_line(
    pytester: pytest.Pytester, clerk_args: list[str]
) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_agenttask import ClerkAPIError

        @pytest.mark.agenttask(user_id="user_doesnotexist")
        def test_unknown_user(agent_task): pass

        def test_raised_in_the_test(agent_task_factory):
            with pytest.raises(ClerkAPIError) as info:
                agent_task_factory(identifier="nobody@example.com")
            assert info.value.status == 422 and info.value.code == "form_identifier_not_found"
        """
    )
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*agent_task: POST /agents/tasks: Clerk answered 404 resource_not_found*"]
    )


def test_hooks_change_params_and_observe(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makeconftest(
        """
        EVENTS = []

        def pytest_agenttask_params(request, params):
            params["agent_name"] = "hooked-" + request.node.name
            params["session_max_duration"] = 90

        def pytest_agenttask_created(request, task):
            EVENTS.append(("created", request.node.name, task.agent_task_id))

        def pytest_agenttask_revoked(request, task):
            EVENTS.append(("revoked", request.node.name, task.agent_task_id))

        def pytest_sessionfinish(session):
            print("EVENTS", [(kind, name) for kind, name, _ in EVENTS])
        """
    )
    pytester.makepyfile("def test_one(agent_task): pass")
    result = pytester.runpytest(*clerk_args, "-s")
    result.assert_outcomes(passed=1)
    assert "EVENTS [('created', 'test_one'), ('revoked', 'test_one')]" in result.stdout.str()
    [task] = emulator.tasks
    assert (task.agent_name, task.session_max_duration_in_seconds) == ("hooked-test_one", 90)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('params["usr"] = 1', "unknown keyword 'usr'"),
        ('params["redirect_url"] = "nowhere"', "redirect_url='nowhere': expected an absolute"),
        ('del params["agent_name"]', "removed parameter 'agent_name'"),
        ('params["user_id"] = "u1"', "set both user_id and identifier"),
    ],
)
def test_bad_hook_results_name_the_hook(
    pytester: pytest.Pytester,
    clerk_args: list[str],
    emulator: ClerkEmulator,
    body: str,
    message: str,
) -> None:
    pytester.makeconftest(
        f"""
        def pytest_agenttask_params(request, params):
            params["identifier"] = params["identifier"] or "agent@example.com"
            {body}
        """
    )
    pytester.makepyfile("def test_one(agent_task): pass")
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*the pytest_agenttask_params hook (*conftest.py*)*{message}*"])
    assert emulator.tasks == []


TEARDOWN_OUTCOMES = """
import pytest

def test_passes(agent_task): pass

def test_fails(agent_task): assert False

@pytest.fixture
def broken(agent_task):
    raise RuntimeError("setup broke after the task was made")

def test_setup_error(broken): pass

def test_skipped_inside(agent_task): pytest.skip("not today")

@pytest.mark.xfail(reason="known")
def test_xfails(agent_task): assert False

@pytest.fixture
def broken_teardown(agent_task):
    yield
    raise RuntimeError("teardown broke")

def test_teardown_error(broken_teardown): pass
"""


def test_teardown_revokes_whatever_the_outcome(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(TEARDOWN_OUTCOMES)
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(passed=2, failed=1, skipped=1, xfailed=1, errors=2)
    assert statuses(emulator) == ["revoked"] * 6
    assert emulator.pending_tasks() == []


def test_interrupted_run_still_revokes(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(
        """
        def test_first(agent_task_factory):
            agent_task_factory(); agent_task_factory()
            raise KeyboardInterrupt

        def test_never_runs(agent_task): pass
        """
    )
    result = pytester.runpytest_subprocess(*clerk_args)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert statuses(emulator) == ["revoked", "revoked"]


def test_used_task_is_not_a_failure(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(
        """
        import httpx

        def test_visit(agent_task_url):
            response = httpx.get(agent_task_url, follow_redirects=False)
            assert response.status_code == 307
        """
    )
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(passed=1)
    assert statuses(emulator) == ["consumed"]
    result.stdout.fnmatch_lines(
        [
            "agenttask: 1 Agent Task(s) created: 0 revoked, 1 used to sign in; 1 of 1 session(s) revoked; 0 left open"
        ]
    )


def test_revoke_failure_is_a_teardown_error_then_swept_at_session_end(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    # --agenttask-retries=2 in clerk_args: three attempts fail, the sweep's succeeds.
    emulator.inject_fault(method="POST", path=r"/v1/agents/tasks/[^/]+/revoke", status=500, times=3)
    pytester.makepyfile("def test_one(agent_task): pass")
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(passed=1, errors=1)
    [task] = emulator.tasks
    result.stdout.fnmatch_lines(
        [
            f"*could not revoke Agent Task {task.agent_task_id}: *500 internal_clerk_error*retried once more at the end of the run*",
            "agenttask: 1 Agent Task(s) created: 1 revoked; 0 left open",
        ]
    )
    assert task.status == "revoked"


def test_what_stays_open_is_listed(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    emulator.inject_fault(
        method="POST", path=r"/v1/agents/tasks/[^/]+/revoke", status=503, times=-1
    )
    pytester.makepyfile("def test_one(agent_task): pass")
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(passed=1, errors=1)
    [task] = emulator.tasks
    result.stdout.fnmatch_lines(
        [
            "agenttask: 1 Agent Task(s) created: 0 revoked; 1 left open",
            f"  left open: Agent Task {task.agent_task_id} (test_what_stays_open_is_listed.py::test_one): *503*",
        ]
    )
    emulator.clear_faults()


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 429, "retry_after": 1},
        {"status": 429},
        {"status": 503},
        {"status": 502},
        {"drop": True},
    ],
    ids=["429-retry-after", "429", "503", "502", "dropped"],
)
def test_create_is_retried(
    pytester: pytest.Pytester,
    clerk_args: list[str],
    emulator: ClerkEmulator,
    fault: dict[str, object],
) -> None:
    emulator.inject_fault(method="POST", path="/v1/agents/tasks", times=2, **fault)  # type: ignore[arg-type]
    pytester.makepyfile("def test_one(agent_task): pass")
    result = pytester.runpytest(*clerk_args)
    assert result.parseoutcomes().get("passed") == 1, [
        (r.method, r.path, r.status, r.fault) for r in emulator.requests
    ]
    assert statuses(emulator) == ["revoked"]


def test_gives_up_after_the_configured_retries(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    emulator.inject_fault(method="POST", path="/v1/agents/tasks", status=503, times=3)
    pytester.makepyfile("def test_one(agent_task): pass")
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*agent_task: *503 service_unavailable*"])
    creates = [r for r in emulator.requests if r.method == "POST" and r.path == "/v1/agents/tasks"]
    assert len(creates) == 3


def test_embedded_emulator_needs_no_configuration(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import httpx

        def test_task(agent_task, clerk_emulator):
            assert clerk_emulator.task(agent_task.agent_task_id).status == "pending"
            assert agent_task.url.startswith(clerk_emulator.frontend_api_url)

        def test_settings(agenttask_settings, clerk_emulator):
            assert agenttask_settings.api_url == clerk_emulator.api_url
            assert agenttask_settings.user_id == clerk_emulator.default_user_id
            assert agenttask_settings.redirect_url == clerk_emulator.default_redirect_url

        def test_lands(agent_task_url, clerk_emulator):
            response = httpx.get(agent_task_url, follow_redirects=True)
            assert response.status_code == 200
        """
    )
    result = pytester.runpytest("-p", "pytest_agenttask", "--agenttask-emulator")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "agenttask: 2 Agent Task(s) created: 1 revoked, 1 used to sign in; 1 of 1 session(s) revoked; 0 left open; emulator: 0 pending task(s), 0 active session(s)"
        ]
    )


def test_emulator_from_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p pytest_agenttask\nagenttask_emulator = true\n")
    pytester.makepyfile("def test_task(agent_task): pass")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*emulator: 0 pending task(s), 0 active session(s)"])


def test_clerk_emulator_without_the_flag_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_emu(clerk_emulator): pass")
    result = pytester.runpytest("-p", "pytest_agenttask")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*clerk_emulator needs the embedded emulator: run with --agenttask-emulator*"]
    )


def test_pytest_plugins_in_a_conftest_enables_it(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('pytest_plugins = ["pytest_agenttask"]')
    pytester.makepyfile("def test_task(agent_task): pass")
    pytester.runpytest("--agenttask-emulator").assert_outcomes(passed=1)


def test_client_fixture_is_shared_by_the_run(
    pytester: pytest.Pytester, clerk_args: list[str]
) -> None:
    pytester.makepyfile(
        """
        SEEN = set()

        def test_a(agenttask_client, agent_task): SEEN.add(id(agenttask_client))
        def test_b(agenttask_client, agent_task): SEEN.add(id(agenttask_client)); assert len(SEEN) == 1
        """
    )
    pytester.runpytest(*clerk_args).assert_outcomes(passed=2)


def test_a_failing_revoked_hook_does_not_stop_teardown(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makeconftest(
        """
        def pytest_agenttask_revoked(request, task):
            raise RuntimeError("observer broke")
        """
    )
    pytester.makepyfile(
        "def test_three(agent_task_factory): agent_task_factory(); agent_task_factory(); agent_task_factory()"
    )
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: observer broke*"])
    assert statuses(emulator) == ["revoked"] * 3


def test_a_session_opened_by_a_failing_setup_is_revoked_in_teardown(
    pytester: pytest.Pytester, session_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makeconftest(
        """
        import pytest_agenttask.session as session

        class Broken(session.AgentSession):
            def __init__(self, *args, **kwargs):
                raise RuntimeError("constructor broke after signing in")

        session.AgentSession = Broken
        """
    )
    pytester.makepyfile(
        "def test_one(agent_session): pass\ndef test_two(clerk_emulator=None): pass"
    )
    # In a subprocess: the conftest patches the session module for that run only.
    result = pytester.runpytest_subprocess(*session_args)
    result.assert_outcomes(passed=1, errors=1)
    [session] = emulator.sessions
    assert session.status == "revoked"
    assert emulator.pending_tasks() == []


def test_setup_errors_are_one_clear_line(pytester: pytest.Pytester, clerk_args: list[str]) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.agenttask(user_id="user_doesnotexist")
        def test_unknown_user(agent_task): pass
        """
    )
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    reported = [line for line in result.outlines if line.startswith("agent_task: ")]
    assert len(reported) == 1
    assert "Clerk answered 404 resource_not_found" in reported[0]
    assert "During handling" not in output
    assert "Traceback" not in output


def test_a_test_closing_the_shared_client_does_not_break_the_run(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(
        """
        def test_closes_it(agenttask_client, agent_task):
            agenttask_client.close()

        def test_next(agent_task): pass
        """
    )
    result = pytester.runpytest(*clerk_args)
    result.assert_outcomes(passed=2)
    assert statuses(emulator) == ["revoked", "revoked"]


def test_proxy_settings_do_not_reach_the_loopback_emulator(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    pytester.makepyfile("def test_signed_in(agent_session): pass")
    result = pytester.runpytest("-p", "pytest_agenttask", "--agenttask-emulator")
    result.assert_outcomes(passed=1)


def test_dash_p_no_disables_a_plugin_enabled_in_addopts(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p pytest_agenttask --agenttask-emulator\n")
    pytester.makepyfile("def test_plain(): pass\ndef test_task(agent_task): pass")
    result = pytester.runpytest_subprocess("-p", "no:pytest_agenttask", "-p", "no:asyncio")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*pytest-agenttask is disabled in this run*"])
    assert "agenttask:" not in result.stdout.str()


BACKGROUND_SUITE = """
import httpx

def test_task(agent_task): pass
def test_url_used_by_the_test(agent_task_url): httpx.get(agent_task_url)
def test_session(agent_session): assert agent_session.client.get("/api/me").status_code == 200
def test_fails(agent_task): assert False
"""


def test_background_close_leaves_nothing_open(
    pytester: pytest.Pytester, session_args: list[str], emulator: ClerkEmulator
) -> None:
    pytester.makepyfile(BACKGROUND_SUITE)
    result = pytester.runpytest(*session_args, "--agenttask-close=background")
    result.assert_outcomes(passed=3, failed=1)
    assert emulator.pending_tasks() == []
    assert emulator.active_sessions() == []
    assert len(emulator.tasks) == 4
    result.stdout.fnmatch_lines(
        [
            "agenttask: 4 Agent Task(s) created: 2 revoked, 2 used to sign in; 2 of 2 session(s) revoked; 0 left open"
        ]
    )


def test_background_close_failures_are_swept_or_fail_the_run(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    revoke = r"/v1/agents/tasks/[^/]+/revoke"
    emulator.inject_fault(path=revoke, status=503, times=3)  # the job gives up, the sweep succeeds
    pytester.makepyfile("def test_one(agent_task): pass")
    result = pytester.runpytest(*clerk_args, "--agenttask-close=background")
    result.assert_outcomes(passed=1)  # no teardown error: the test had its result
    assert result.ret == pytest.ExitCode.OK
    assert emulator.pending_tasks() == []

    emulator.reset()
    emulator.inject_fault(path=revoke, status=503, times=-1)
    result = pytester.runpytest(*clerk_args, "--agenttask-close=background")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # something stayed open
    result.stdout.fnmatch_lines(["*1 left open*", "  left open: Agent Task *503*"])
    emulator.clear_faults()


def test_under_xdist_the_workers_report_to_the_summary(
    pytester: pytest.Pytester, clerk_args: list[str], emulator: ClerkEmulator
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_task(agent_task, n): pass

        @pytest.mark.agenttask(usr_id="typo")
        def test_bad_marker(agent_task): pass
        """
    )
    result = pytester.runpytest_subprocess(*clerk_args, "-n", "2")
    result.assert_outcomes(passed=4, errors=1)  # a bad marker fails its test, no crash
    result.stdout.fnmatch_lines(
        [
            "*test_bad_marker*unknown keyword 'usr_id'*",
            "[[]gw?[]] agenttask: * 0 left open",
        ]
    )
    assert "INTERNALERROR" not in result.stdout.str()
    assert len(emulator.tasks) == 4
    assert emulator.pending_tasks() == []
