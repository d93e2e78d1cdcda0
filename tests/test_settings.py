"""Settings: every key, its CLI flag, precedence, and a clear error for bad values."""

from __future__ import annotations

import pytest

from pytest_agenttask.settings import Settings

pytestmark = pytest.mark.usefixtures("emulator")

SHOW_SETTINGS = """
def test_show(agenttask_settings):
    s = agenttask_settings
    print("\\nSETTINGS", s.api_url, s.user_id, s.identifier, s.redirect_url, s.agent_name,
          s.task_description, s.session_max_duration, s.timeout, s.retries, s.missing_key,
          s.allow_live_keys, s.emulator, sep="|")
"""


def settings_line(result: pytest.RunResult) -> list[str]:
    for line in result.outlines:
        if line.startswith("SETTINGS|"):
            return line.split("|")[1:]
    raise AssertionError("no settings printed:\n" + result.stdout.str())


def test_defaults(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW_SETTINGS)
    result = pytester.runpytest("-p", "pytest_agenttask", "-s")
    result.assert_outcomes(passed=1)
    assert settings_line(result) == [
        "https://api.clerk.com/v1",
        "None",
        "None",
        "None",
        "pytest-agenttask",
        "{nodeid}",
        "None",
        "10.0",
        "3",
        "skip",
        "False",
        "False",
    ]


def test_every_ini_key_is_read(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        agenttask_api_url = https://clerk.example.test/v1
        agenttask_secret_key_env = MY_CLERK_KEY
        agenttask_identifier = ada@example.com
        agenttask_redirect_url = https://app.example.test/home
        agenttask_agent_name = ci-bot
        agenttask_task_description = run {name}
        agenttask_session_max_duration = 600
        agenttask_timeout = 2.5
        agenttask_retries = 0
        agenttask_missing_key = fail
        agenttask_allow_live_keys = true
        """
    )
    pytester.makepyfile(SHOW_SETTINGS)
    result = pytester.runpytest("-p", "pytest_agenttask", "-s")
    result.assert_outcomes(passed=1)
    assert settings_line(result) == [
        "https://clerk.example.test/v1",
        "None",
        "ada@example.com",
        "https://app.example.test/home",
        "ci-bot",
        "run {name}",
        "600",
        "2.5",
        "0",
        "fail",
        "True",
        "False",
    ]


def test_every_cli_flag_is_read_and_wins_over_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        agenttask_api_url = https://ini.example.test/v1
        agenttask_user_id = user_from_ini
        agenttask_timeout = 99
        agenttask_agent_name = from-ini
        """
    )
    pytester.makepyfile(SHOW_SETTINGS)
    result = pytester.runpytest(
        "-p",
        "pytest_agenttask",
        "-s",
        "--agenttask-api-url=https://cli.example.test/v1",
        "--agenttask-secret-key-env=OTHER_KEY",
        "--agenttask-user-id=user_from_cli",
        "--agenttask-redirect-url=http://localhost:3000/",
        "--agenttask-agent-name=from-cli",
        "--agenttask-task-description={module}",
        "--agenttask-session-max-duration=60",
        "--agenttask-timeout=1",
        "--agenttask-retries=5",
        "--agenttask-missing-key=fail",
        "--agenttask-allow-live-keys",
    )
    result.assert_outcomes(passed=1)
    assert settings_line(result) == [
        "https://cli.example.test/v1",
        "user_from_cli",
        "None",
        "http://localhost:3000/",
        "from-cli",
        "{module}",
        "60",
        "1.0",
        "5",
        "fail",
        "True",
        "False",
    ]


def test_override_ini_counts_as_ini(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW_SETTINGS)
    result = pytester.runpytest("-p", "pytest_agenttask", "-s", "-o", "agenttask_retries=7")
    assert settings_line(result)[8] == "7"


BAD_VALUES = [
    ("agenttask_timeout", "abc", "expected a number of seconds greater than 0"),
    ("agenttask_timeout", "-1", "expected a number of seconds greater than 0"),
    ("agenttask_timeout", "0", "expected a number of seconds greater than 0"),
    ("agenttask_timeout", "nan", "expected a number of seconds greater than 0"),
    ("agenttask_retries", "three", "expected a whole number from 0 to 10"),
    ("agenttask_retries", "-1", "expected a whole number from 0 to 10"),
    ("agenttask_retries", "11", "expected a whole number from 0 to 10"),
    ("agenttask_session_max_duration", "-5", "expected a whole number of seconds greater than 0"),
    ("agenttask_session_max_duration", "1.5", "expected a whole number of seconds greater than 0"),
    ("agenttask_redirect_url", "/dashboard", "expected an absolute http:// or https:// URL"),
    ("agenttask_redirect_url", "ftp://x.test/", "expected an absolute http:// or https:// URL"),
    ("agenttask_api_url", "api.clerk.com/v1", "expected an absolute http:// or https:// URL"),
    ("agenttask_api_url", "https://api.clerk.com", "including /v1"),
    ("agenttask_missing_key", "ignore", "expected skip or fail"),
    ("agenttask_allow_live_keys", "maybe", "expected true or false"),
    ("agenttask_emulator", "yes please", "expected true or false"),
    ("agenttask_secret_key_env", "CLERK-KEY", "expected the name of an environment variable"),
    ("agenttask_task_description", "{nodeid} {user}", "got {user}"),
    ("agenttask_task_description", "{nodeid", "expected a template"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_bad_ini_value_stops_the_run(
    pytester: pytest.Pytester, key: str, value: str, expected: str
) -> None:
    ini = pytester.makeini(f"[pytest]\n{key} = {value}\n")
    pytester.makepyfile("def test_never(): pass")
    result = pytester.runpytest("-p", "pytest_agenttask")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1
    assert f"pytest-agenttask: {key} = {value!r} (from configuration file {ini}): " in errors[0]
    assert expected in errors[0]
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES[:8])
def test_bad_cli_value_names_the_flag(
    pytester: pytest.Pytester, key: str, value: str, expected: str
) -> None:
    flag = "--" + key.replace("_", "-")
    pytester.makepyfile("def test_never(): pass")
    result = pytester.runpytest("-p", "pytest_agenttask", f"{flag}={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: pytest-agenttask: {key} = '{value}' (from command line {flag}): {expected}*"]
    )


def test_user_id_and_identifier_together_are_refused(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nagenttask_user_id = user_1\n")
    result = pytester.runpytest("-p", "pytest_agenttask", "--agenttask-identifier=a@example.com")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*agenttask_user_id (from configuration file *) and agenttask_identifier (from command line --agenttask-identifier) are both set*"
        ]
    )


@pytest.mark.parametrize(
    "key", ["agenttask_secret_key", "agenttask_user_id", "agenttask_secret_key_env"]
)
def test_a_secret_key_in_the_ini_file_is_refused_without_echoing_it(
    pytester: pytest.Pytester, key: str
) -> None:
    pytester.makeini(f"[pytest]\n{key} = sk_test_AbCdEf0123456789\n")
    result = pytester.runpytest("-p", "pytest_agenttask")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    output = result.stdout.str() + result.stderr.str()
    assert "AbCdEf0123456789" not in output
    assert key in output
    assert "environment variable" in output


def test_live_key_is_refused_unless_allowed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", "sk_live_" + "NotARealKey123")  # fake, split on purpose
    pytester.makepyfile("def test_ok(): pass")
    refused = pytester.runpytest("-p", "pytest_agenttask")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(
        ["*CLERK_SECRET_KEY holds an sk_live_ key*agenttask_allow_live_keys*"]
    )
    assert "NotARealKey123" not in refused.stdout.str() + refused.stderr.str()
    allowed = pytester.runpytest("-p", "pytest_agenttask", "-o", "agenttask_allow_live_keys=true")
    allowed.assert_outcomes(passed=1)


def test_a_value_that_is_not_a_secret_key_is_refused(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", "pk_test_publishable_not_secret")
    result = pytester.runpytest("-p", "pytest_agenttask", "--agenttask-secret-key-env=MY_KEY")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*environment variable MY_KEY (named by agenttask_secret_key_env)*expected sk_test_... or sk_live_...*"
        ]
    )
    assert "publishable_not_secret" not in result.stderr.str()


def test_missing_key_skips_with_a_reason_naming_the_variable(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_task(agent_task): pass
        def test_url(agent_task_url): pass
        def test_no_clerk(agenttask_settings): pass
        """
    )
    result = pytester.runpytest("-p", "pytest_agenttask", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(
        ["SKIPPED *Clerk secret key not set: export CLERK_SECRET_KEY*--agenttask-emulator*"]
    )


def test_missing_key_fails_when_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_task(agent_task): pass")
    result = pytester.runpytest(
        "-p",
        "pytest_agenttask",
        "--agenttask-missing-key=fail",
        "--agenttask-secret-key-env=CI_CLERK",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*Clerk secret key not set: export CI_CLERK*"])


def test_report_header_says_where_the_plugin_points_but_not_the_key(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", "sk_test_HeaderMustNotShowThis")
    pytester.makepyfile("def test_ok(): pass")
    result = pytester.runpytest("-p", "pytest_agenttask", "--agenttask-user-id=user_42")
    result.stdout.fnmatch_lines(
        [
            "agenttask: Clerk Backend API https://api.clerk.com/v1, user user_42, key from $CLERK_SECRET_KEY (set)"
        ]
    )
    assert "HeaderMustNotShowThis" not in result.stdout.str()
    emulated = pytester.runpytest("-p", "pytest_agenttask", "--agenttask-emulator")
    emulated.stdout.fnmatch_lines(["agenttask: embedded Clerk emulator on 127.0.0.1*seeded user*"])


def test_nothing_runs_without_dash_p(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_task(agent_task): pass")
    result = pytester.runpytest("--agenttask-emulator")
    assert result.ret == pytest.ExitCode.USAGE_ERROR  # the flag does not even exist
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'agent_task' not found*"])


def test_settings_repr_never_shows_the_key() -> None:
    from pytest_agenttask._redact import Secret

    settings = Settings(secret_key=Secret("sk_test_ReprMustHideMe"))
    assert "ReprMustHideMe" not in repr(settings)
    assert "ReprMustHideMe" not in str(settings)


def test_a_comment_left_on_an_id_line_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nagenttask_user_id = user_2abc   # or agenttask_identifier\n")
    result = pytester.runpytest("-p", "pytest_agenttask")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*agenttask_user_id = 'user_2abc   # or agenttask_identifier'*without spaces*"]
    )


def test_a_secret_key_on_the_command_line_is_refused_without_echoing_it(
    pytester: pytest.Pytester,
) -> None:
    result = pytester.runpytest(
        "-p", "pytest_agenttask", "--agenttask-secret-key=sk_test_CliLeak123"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--agenttask-secret-key (from command line): a secret key must not be passed*"]
    )
    assert "CliLeak123" not in result.stdout.str() + result.stderr.str()
