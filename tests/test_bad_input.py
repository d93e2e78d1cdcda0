"""Bad input, table-driven: each gets one clear message naming the input and where it
came from, the right exit code, and no traceback from the plugin's internals."""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

USAGE = pytest.ExitCode.USAGE_ERROR
FAILED = pytest.ExitCode.TESTS_FAILED


@dataclass(frozen=True)
class Case:
    """One bad input: where it goes, what the run must say, and its exit code."""

    id: str
    message: str
    exit_code: pytest.ExitCode = USAGE
    ini: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    marker: str = ""
    conftest: str = ""
    answer: tuple[int, str, str] | None = None  # what the fake Clerk answers a create with


def ini(key: str, value: str, expected: str) -> Case:
    """A bad value of an ini key, in the inner run's configuration file."""
    message = f"{key} = {value!r} (from configuration file*{expected}"
    return Case(f"ini-{key}-{value}", message, ini=f"{key} = {value}\n")


HOOK = "def pytest_agenttask_params(request, params):\n    {}\n"

CASES = [
    # -- ini values ----------------------------------------------------------------
    ini("agenttask_timeout", "abc", "expected a number of seconds greater than 0"),
    ini("agenttask_timeout", "-3", "expected a number of seconds greater than 0"),
    ini("agenttask_retries", "many", "expected a whole number from 0 to 10"),
    ini("agenttask_retries", "99", "expected a whole number from 0 to 10"),
    ini("agenttask_session_max_duration", "0", "expected a whole number of seconds greater than 0"),
    ini("agenttask_redirect_url", "/relative", "expected an absolute http:// or https:// URL"),
    ini(
        "agenttask_redirect_url",
        "javascript:alert(1)",
        "expected an absolute http:// or https:// URL",
    ),
    ini("agenttask_api_url", "https://api.clerk.com", "including /v1"),
    ini("agenttask_missing_key", "maybe", "expected skip or fail"),
    ini("agenttask_allow_live_keys", "perhaps", "expected true or false"),
    ini("agenttask_emulator", "2", "expected true or false"),
    ini("agenttask_secret_key_env", "1BAD", "expected the name of an environment variable"),
    ini("agenttask_task_description", "{user}", "got {user}"),
    ini("agenttask_user_id", "user_1   # the test user", "without spaces"),
    Case(
        "ini-secret-key",
        "agenttask_secret_key (from configuration file*must not be kept in a configuration file",
        ini="agenttask_secret_key = sk_test_IniSecret\n",
    ),
    Case(
        "ini-both-users",
        "agenttask_user_id (from configuration file*and agenttask_identifier*are both set",
        ini="agenttask_user_id = u1\nagenttask_identifier = a@example.com\n",
    ),
    # -- command line ----------------------------------------------------------------
    Case(
        "cli-timeout",
        "agenttask_timeout = '0' (from command line --agenttask-timeout)",
        args=("--agenttask-timeout=0",),
    ),
    Case(
        "cli-retries",
        "agenttask_retries = '-1' (from command line --agenttask-retries)",
        args=("--agenttask-retries=-1",),
    ),
    Case(
        "cli-api-url",
        "agenttask_api_url = 'ftp://x.test/v1' (from command line --agenttask-api-url)",
        args=("--agenttask-api-url=ftp://x.test/v1",),
    ),
    Case(
        "cli-secret-key",
        "--agenttask-secret-key (from command line): a secret key must not be passed",
        args=("--agenttask-secret-key=sk_test_CliSecret",),
    ),
    Case(
        "cli-override-ini",
        "agenttask_identifier = 'a b' (from -o agenttask_identifier=...)",
        args=("-o", "agenttask_identifier=a b"),
    ),
    # -- environment -------------------------------------------------------------------
    Case(
        "env-not-a-secret-key",
        "environment variable CLERK_SECRET_KEY (named by agenttask_secret_key_env)*expected sk_test_",
        env={"CLERK_SECRET_KEY": "pk_test_Publishable"},
    ),
    Case(
        "env-live-key",
        "environment variable CLERK_SECRET_KEY holds an sk_live_ key",
        # A fake key, split so that no secret scanner takes it for a real one.
        env={"CLERK_SECRET_KEY": "sk_live_" + "LiveSecret"},
    ),
    # -- marker keywords and values ---------------------------------------------------------
    Case(
        "marker-unknown-keyword",
        "@pytest.mark.agenttask on test_bad.py::test_it: unknown keyword 'usr_id'",
        marker='usr_id="u"',
    ),
    Case(
        "marker-positional",
        "@pytest.mark.agenttask on test_bad.py::test_it: takes keywords only",
        marker='"user_1"',
    ),
    Case(
        "marker-relative-redirect",
        "test_bad.py::test_it: redirect_url='/home': expected an absolute",
        marker='redirect_url="/home"',
    ),
    Case(
        "marker-duration-text",
        "test_bad.py::test_it: session_max_duration='soon': expected a whole number",
        marker='session_max_duration="soon"',
    ),
    Case(
        "marker-agent-name-none",
        "test_bad.py::test_it: agent_name=None: expected a string, got NoneType",
        marker="agent_name=None",
    ),
    Case(
        "marker-both-users",
        "test_bad.py::test_it: both user_id and identifier given",
        marker='user_id="u", identifier="a@example.com"',
    ),
    # -- hook results --------------------------------------------------------------------------
    Case(
        "hook-unknown-key",
        "the pytest_agenttask_params hook (*conftest.py*): unknown keyword 'scope'",
        FAILED,
        conftest=HOOK.format('params["scope"] = "admin"'),
    ),
    Case(
        "hook-bad-redirect",
        "the pytest_agenttask_params hook (*conftest.py*): redirect_url=42: expected a string, got int",
        FAILED,
        conftest=HOOK.format('params["redirect_url"] = 42'),
    ),
    Case(
        "hook-removed-key",
        "the pytest_agenttask_params hook (*conftest.py*): removed parameter 'agent_name'",
        FAILED,
        conftest=HOOK.format('del params["agent_name"]'),
    ),
    # -- what Clerk (or something in its place) answers ---------------------------------------
    Case(
        "answer-html-page",
        "agent_task: POST /agents/tasks -> 502: Clerk answered with no Clerk error envelope (content-type text/html*",
        FAILED,
        answer=(502, "text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>"),
    ),
    Case(
        "answer-empty-200",
        "agent_task: POST /agents/tasks -> 200: Clerk answered with an empty body",
        FAILED,
        answer=(200, "application/json", ""),
    ),
    Case(
        "answer-json-list",
        "agent_task: *not an object (list)*",
        FAILED,
        answer=(200, "application/json", "[]"),
    ),
    Case(
        "answer-wrong-shape",
        "agent_task: *answered with object 'user', expected 'agent_task'*",
        FAILED,
        answer=(200, "application/json", '{"object": "user", "id": "user_1"}'),
    ),
    Case(
        "answer-no-task-id",
        "agent_task: *without a string agent_task_id*",
        FAILED,
        answer=(200, "application/json", '{"object": "agent_task", "agent_id": "agt_1"}'),
    ),
    Case(
        "answer-plain-text",
        "agent_task: POST /agents/tasks -> 200: Clerk answered with a body that is not JSON",
        FAILED,
        answer=(200, "text/plain", "ok"),
    ),
    Case(
        "answer-invalid-json",
        "agent_task: POST /agents/tasks -> 200: Clerk answered with a body that is not JSON",
        FAILED,
        answer=(200, "application/json", '{"object": "agent_task",'),
    ),
    Case(
        "answer-not-an-envelope",
        "agent_task: POST /agents/tasks -> 422: Clerk answered with no Clerk error envelope",
        FAILED,
        answer=(422, "application/json", '{"error": "nope"}'),
    ),
    Case(
        "answer-clerk-401",
        "agent_task: POST /agents/tasks: Clerk answered 401 clerk_key_invalid: The secret key is invalid",
        FAILED,
        answer=(
            401,
            "application/json",
            '{"errors": [{"message": "invalid", "long_message": "The secret key is invalid", "code": "clerk_key_invalid"}], "clerk_trace_id": "abc"}',
        ),
    ),
]


@pytest.fixture(scope="module")
def fake_clerk() -> Iterator[tuple[str, list[tuple[int, str, str]]]]:
    """A server in Clerk's place that answers every request with the answer at hand."""
    answers: list[tuple[int, str, str]] = [(500, "text/plain", "unset")]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, content_type, body = answers[-1]
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", answers
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    fake_clerk: tuple[str, list[tuple[int, str, str]]],
    case: Case,
) -> None:
    api_url, answers = fake_clerk
    pytester.makeini("[pytest]\n" + case.ini)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.conftest:
        pytester.makeconftest(case.conftest)
    marker = f"@pytest.mark.agenttask({case.marker})\n" if case.marker else ""
    pytester.makepyfile(test_bad=f"import pytest\n\n{marker}def test_it(agent_task): pass\n")
    args = ["-p", "pytest_agenttask", *case.args]
    if case.conftest or case.answer:
        monkeypatch.setenv("CLERK_SECRET_KEY", "sk_test_FakeClerkKey")
        args += [
            f"--agenttask-api-url={api_url}",
            "--agenttask-identifier=agent@example.com",
            "--agenttask-redirect-url=http://localhost:8000/",
            "--agenttask-retries=0",
        ]
    if case.answer:
        answers.append(case.answer)
    result = pytester.runpytest(*args)
    output = result.stdout.str() + "\n" + result.stderr.str()
    assert result.ret == case.exit_code, output
    if case.exit_code == USAGE:
        lines = [line for line in result.errlines if line.startswith("ERROR:")]
        assert len(lines) == 1, output
        assert lines[0].startswith("ERROR: pytest-agenttask: "), output
    else:
        result.assert_outcomes(errors=1)
        lines = result.outlines
    assert any(fnmatch.fnmatch(line, f"*{case.message}*") for line in lines), output
    assert "Traceback" not in output
    assert "pytest_agenttask/" not in output, "a frame of the plugin's internals was shown"
    for secret in ("IniSecret", "CliSecret", "Publishable", "LiveSecret", "FakeClerkKey"):
        assert secret not in output
