"""Settings: one frozen object resolved once from CLI > ini > defaults.

Every value is parsed by a small function that raises :class:`ValueError` with
what it expected; :func:`load_settings` turns that into one line naming the
key, the value (never a secret) and where the value came from. The pytest
``Config`` is only read in :func:`load_settings` and :func:`register_options`.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from ._redact import Secret
from .errors import ConfigurationError

if TYPE_CHECKING:
    import pytest

__all__ = [
    "DEFAULT_API_URL",
    "MARKER_KEYWORDS",
    "Settings",
    "load_settings",
    "register_options",
]

DEFAULT_API_URL = "https://api.clerk.com/v1"
DEFAULT_SECRET_KEY_ENV = "CLERK_SECRET_KEY"  # noqa: S105 (a variable name)
TASK_DESCRIPTION_FIELDS = ("nodeid", "name", "module")
MARKER_KEYWORDS = (
    "user_id",
    "identifier",
    "redirect_url",
    "agent_name",
    "task_description",
    "session_max_duration",
)

# Patterns as strings: the re module compiles (and caches) them on first use.
_SECRET_KEY_SHAPE = r"sk_(test|live)_\S+"  # noqa: S105 (a pattern)
_LOOKS_LIKE_SECRET = r"\bsk_(?:test|live)_"  # noqa: S105 (a pattern)
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


# -- parsers: str -> value, ValueError("expected ...") on bad input ----------


def parse_http_url(value: str) -> str:
    """An absolute ``http``/``https`` URL."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("expected an absolute http:// or https:// URL")
    return value


def parse_api_url(value: str) -> str:
    """The Backend API base: an absolute URL whose path ends in ``/v1``."""
    value = parse_http_url(value).rstrip("/")
    if not urlsplit(value).path.endswith("/v1"):
        raise ValueError(
            "expected the Backend API base URL including /v1, e.g. https://api.clerk.com/v1"
        )
    return value


def parse_seconds(value: str) -> float:
    """A number of seconds greater than zero."""
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("expected a number of seconds greater than 0") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError("expected a number of seconds greater than 0")
    return seconds


def parse_retries(value: str) -> int:
    """A whole number from 0 to 10."""
    try:
        retries = int(value)
    except ValueError:
        raise ValueError("expected a whole number from 0 to 10") from None
    if not 0 <= retries <= 10:
        raise ValueError("expected a whole number from 0 to 10")
    return retries


def parse_duration(value: str | int) -> int:
    """A whole number of seconds greater than zero."""
    if isinstance(value, bool):
        raise ValueError("expected a whole number of seconds greater than 0")
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise ValueError("expected a whole number of seconds greater than 0") from None
    if seconds <= 0:
        raise ValueError("expected a whole number of seconds greater than 0")
    return seconds


def parse_bool(value: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_missing_key(value: str) -> str:
    """``skip`` or ``fail``."""
    if value not in ("skip", "fail"):
        raise ValueError("expected skip or fail")
    return value


def parse_close(value: str) -> str:
    """``teardown`` or ``background``."""
    if value not in ("teardown", "background"):
        raise ValueError("expected teardown or background")
    return value


def parse_session_scope(value: str) -> str:
    """``function``, ``module`` or ``session``."""
    if value not in ("function", "module", "session"):
        raise ValueError("expected function, module or session")
    return value


def parse_env_name(value: str) -> str:
    """The name of an environment variable."""
    if not re.fullmatch(_ENV_NAME, value):
        raise ValueError("expected the name of an environment variable, such as CLERK_SECRET_KEY")
    return value


def parse_text(value: str) -> str:
    """Any non-empty text."""
    if not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def parse_id(value: str) -> str:
    """A user id or identifier: non-empty, without spaces (an ini comment left on
    the line, say, would otherwise become part of it)."""
    if not value or any(char.isspace() for char in value):
        raise ValueError(
            "expected an id or identifier without spaces (comments go on their own line)"
        )
    return value


def parse_template(value: str) -> str:
    """A ``str.format`` template using only ``{nodeid}``, ``{name}`` and ``{module}``."""
    parse_text(value)
    try:
        import string

        fields = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
    except ValueError as error:
        raise ValueError(f"expected a template such as '{{nodeid}}' ({error})") from None
    unknown = sorted({name for name in fields if name not in TASK_DESCRIPTION_FIELDS})
    if unknown:
        allowed = ", ".join("{" + name + "}" for name in TASK_DESCRIPTION_FIELDS)
        raise ValueError(f"expected a template using only {allowed}; got {{{unknown[0]}}}")
    return value


# -- the option table ----------------------------------------------------------


class _Option:
    """One setting: its ini key (and CLI flag), help, parser and default."""

    # A plain class rather than a dataclass: it is built at import, and the plugin's
    # import is what a suite that never uses it pays.
    __slots__ = ("default", "flag", "help", "key", "parse")

    def __init__(
        self,
        key: str,
        help: str,
        parse: Callable[[str], Any],
        default: Any = None,
        flag: bool = False,  # a CLI switch (store_true) rather than a value
    ) -> None:
        self.key, self.help, self.parse, self.default, self.flag = key, help, parse, default, flag

    @property
    def cli(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def dest(self) -> str:
        return self.key


_OPTIONS = (
    _Option(
        "agenttask_api_url",
        "Backend API base URL, /v1 included (default: %(default)s).",
        parse_api_url,
        DEFAULT_API_URL,
    ),
    _Option(
        "agenttask_secret_key_env",
        "name of the environment variable holding the Clerk secret "
        "key (default: %(default)s); the key itself is never read from a file.",
        parse_env_name,
        DEFAULT_SECRET_KEY_ENV,
    ),
    _Option(
        "agenttask_user_id", "Clerk user id the tasks sign in (on_behalf_of.user_id).", parse_id
    ),
    _Option(
        "agenttask_identifier",
        "verified email, phone number or username of the user the "
        "tasks sign in (on_behalf_of.identifier).",
        parse_id,
    ),
    _Option(
        "agenttask_redirect_url",
        "absolute URL of your app the task URL lands on after signing in.",
        parse_http_url,
    ),
    _Option(
        "agenttask_agent_name",
        "agent_name of the tasks (default: %(default)s).",
        parse_text,
        "pytest-agenttask",
    ),
    _Option(
        "agenttask_task_description",
        "template of task_description; fields {nodeid}, {name}, {module} (default: %(default)s).",
        parse_template,
        "{nodeid}",
    ),
    _Option(
        "agenttask_session_max_duration",
        "session_max_duration_in_seconds of the tasks (default: Clerk's, 1800).",
        parse_duration,
    ),
    _Option(
        "agenttask_timeout",
        "seconds per HTTP request to Clerk (default: %(default)s).",
        parse_seconds,
        10.0,
    ),
    _Option(
        "agenttask_retries",
        "retries on 429, 5xx and connection errors (default: %(default)s).",
        parse_retries,
        3,
    ),
    _Option(
        "agenttask_missing_key",
        "skip or fail the tests that need Clerk when the secret key "
        "is not set (default: %(default)s).",
        parse_missing_key,
        "skip",
    ),
    _Option(
        "agenttask_allow_live_keys",
        "accept sk_live_ keys: Agent Tasks sign real production users in (default: false).",
        parse_bool,
        False,
        flag=True,
    ),
    _Option(
        "agenttask_close",
        "when a test's tasks and sessions are closed: teardown (in the test's teardown; a "
        "failure is a teardown error) or background (after the test, on a background "
        "thread, off the next test's way; all closed before the run ends) "
        "(default: %(default)s).",
        parse_close,
        "teardown",
    ),
    _Option(
        "agenttask_session_scope",
        "how widely agent_session, async_agent_session and agent_page share one sign-in: "
        "function (a fresh task per test), module or session (default: %(default)s).",
        parse_session_scope,
        "function",
    ),
    _Option(
        "agenttask_emulator",
        "start the embedded Clerk emulator on loopback and use it "
        "instead of Clerk (default: false).",
        parse_bool,
        False,
        flag=True,
    ),
)
_OPTION_BY_KEY = {option.key: option for option in _OPTIONS}
# Registered only so that a secret key put in a configuration file is refused
# with a clear message instead of pytest's "unknown config option" warning.
_SECRET_KEY_TRAP = "agenttask_secret_key"  # noqa: S105 (an ini key)


def register_options(parser: pytest.Parser) -> None:
    """Add every setting as a CLI flag and an ini key."""
    group = parser.getgroup("agenttask", "Clerk Agent Tasks (pytest-agenttask)")
    for option in _OPTIONS:
        help_text = option.help % {"default": option.default}
        if option.flag:
            group.addoption(
                option.cli, action="store_true", default=None, dest=option.dest, help=help_text
            )
        else:
            group.addoption(
                option.cli,
                action="store",
                default=None,
                dest=option.dest,
                metavar=option.key.removeprefix("agenttask_").upper(),
                help=help_text,
            )
        parser.addini(option.key, help=help_text, type="string", default="")
    # Likewise on the command line, where argparse would echo the unknown argument.
    group.addoption(
        "--agenttask-secret-key", dest=_SECRET_KEY_TRAP, default=None, help=argparse.SUPPRESS
    )
    parser.addini(
        _SECRET_KEY_TRAP,
        help="not supported: the secret key is only read from the "
        "environment variable named by agenttask_secret_key_env.",
        type="string",
        default="",
    )


# -- the settings object -------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The plugin's resolved settings. ``sources`` says where each value came from."""

    api_url: str = DEFAULT_API_URL
    secret_key_env: str = DEFAULT_SECRET_KEY_ENV
    user_id: str | None = None
    identifier: str | None = None
    redirect_url: str | None = None
    agent_name: str = "pytest-agenttask"
    task_description: str = "{nodeid}"
    session_max_duration: int | None = None
    timeout: float = 10.0
    retries: int = 3
    missing_key: Literal["skip", "fail"] = "skip"
    allow_live_keys: bool = False
    emulator: bool = False
    session_scope: Literal["function", "module", "session"] = "function"
    close: Literal["teardown", "background"] = "teardown"
    secret_key: Secret | None = field(default=None, compare=False)
    sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def target(self) -> str:
        """A one-line description of where the plugin points, safe to print."""
        if self.emulator and self.api_url == DEFAULT_API_URL:
            where = "embedded Clerk emulator on 127.0.0.1 (started on first use)"
        elif self.emulator:
            where = f"embedded Clerk emulator at {self.api_url}"  # once it has started
        else:
            where = f"Clerk Backend API {self.api_url}"
        if self.user_id:
            who = f"user {self.user_id}"
        elif self.identifier:
            who = f"identifier {self.identifier}"
        elif self.emulator:
            who = "the emulator's seeded user"
        else:
            who = "no default user"
        if self.emulator:
            key = "the emulator's key"
        else:
            key = f"key from ${self.secret_key_env} ({'set' if self.secret_key else 'not set'})"
        return f"{where}, {who}, {key}"


def _describe_value(value: str) -> str:
    return "<redacted>" if re.search(_LOOKS_LIKE_SECRET, value) else repr(value)


def _problem(key: str, value: str, source: str, expected: str) -> str:
    return f"{key} = {_describe_value(value)} (from {source}): {expected}"


def _override_keys(config: pytest.Config) -> set[str]:
    overrides = config.getoption("override_ini", None) or []
    return {item.split("=", 1)[0].strip() for item in overrides if "=" in item}


def load_settings(config: pytest.Config, environ: Mapping[str, str] | None = None) -> Settings:
    """Resolve and validate every setting; raise ``pytest.UsageError`` on the first bad one."""
    import pytest

    try:
        return resolve_settings(
            cli={
                **{option.key: config.getoption(option.dest) for option in _OPTIONS},
                _SECRET_KEY_TRAP: config.getoption(_SECRET_KEY_TRAP),
            },
            ini={key: str(config.getini(key)) for key in (*_OPTION_BY_KEY, _SECRET_KEY_TRAP)},
            ini_source=_ini_source_namer(config),
            environ=os.environ if environ is None else environ,
        )
    except ConfigurationError as error:
        raise pytest.UsageError(f"pytest-agenttask: {error}") from None


def _ini_source_namer(config: pytest.Config) -> Callable[[str], str]:
    overridden = _override_keys(config)
    inipath = config.inipath

    def name(key: str) -> str:
        if key in overridden:
            return f"-o {key}=..."
        return f"configuration file {inipath}" if inipath else "configuration file"

    return name


def resolve_settings(
    *,
    cli: Mapping[str, Any],
    ini: Mapping[str, str],
    ini_source: Callable[[str], str],
    environ: Mapping[str, str],
) -> Settings:
    """Resolve settings from already-read CLI and ini values (CLI wins).

    Raises :class:`ConfigurationError` naming the key, value and source.
    """
    if cli.get(_SECRET_KEY_TRAP) is not None:
        raise ConfigurationError(
            "--agenttask-secret-key (from command line): a secret key must not be passed on the "
            "command line, where shell history and process lists keep it; export it in the "
            "environment variable named by agenttask_secret_key_env "
            f"(default {DEFAULT_SECRET_KEY_ENV}) instead"
        )
    if ini.get(_SECRET_KEY_TRAP, "").strip():
        raise ConfigurationError(
            f"{_SECRET_KEY_TRAP} (from {ini_source(_SECRET_KEY_TRAP)}): a secret key must not be "
            "kept in a configuration file; export it in the environment variable named by "
            f"agenttask_secret_key_env (default {DEFAULT_SECRET_KEY_ENV}) instead"
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in _OPTIONS:
        name = option.key.removeprefix("agenttask_")
        cli_value = cli.get(option.key)
        raw: str | None
        if cli_value is not None:
            raw = "true" if cli_value is True else str(cli_value)
            source = f"command line {option.cli}"
        elif ini.get(option.key, "").strip():
            raw = ini[option.key].strip()
            source = ini_source(option.key)
        else:
            raw, source = None, "default"
        if raw is not None and re.search(_LOOKS_LIKE_SECRET, raw):
            raise ConfigurationError(
                _problem(
                    option.key,
                    raw,
                    source,
                    "this looks like a Clerk secret key; keys are only read from the environment "
                    "variable named by agenttask_secret_key_env "
                    f"(default {DEFAULT_SECRET_KEY_ENV})",
                )
            )
        if raw is None:
            values[name] = option.default
        else:
            try:
                values[name] = option.parse(raw)
            except ValueError as error:
                raise ConfigurationError(_problem(option.key, raw, source, str(error))) from None
        sources[name] = source

    if values["user_id"] and values["identifier"]:
        raise ConfigurationError(
            f"agenttask_user_id (from {sources['user_id']}) and agenttask_identifier "
            f"(from {sources['identifier']}) are both set: Clerk signs in one user, set only one"
        )

    secret_key = None
    if not values["emulator"]:
        secret_key = _read_secret_key(
            values["secret_key_env"], environ, allow_live=values["allow_live_keys"]
        )
    return Settings(**values, secret_key=secret_key, sources=sources)


def _read_secret_key(
    env_name: str, environ: Mapping[str, str], *, allow_live: bool
) -> Secret | None:
    raw = environ.get(env_name, "").strip()
    if not raw:
        return None
    match = re.fullmatch(_SECRET_KEY_SHAPE, raw)
    if match is None:
        raise ConfigurationError(
            f"environment variable {env_name} (named by agenttask_secret_key_env): its value is "
            "not a Clerk secret key; expected sk_test_... or sk_live_..."
        )
    if match.group(1) == "live" and not allow_live:
        raise ConfigurationError(
            f"environment variable {env_name} holds an sk_live_ key: Agent Tasks sign real "
            "production users in without password or MFA. Use a development instance's "
            "sk_test_ key, or set agenttask_allow_live_keys = true if you really mean it"
        )
    return Secret(raw)


# -- per-test parameters ---------------------------------------------------------


def parse_marker_value(keyword: str, value: object) -> Any:
    """Validate one ``agenttask`` marker / factory / hook value; ValueError on bad input."""
    if keyword == "session_max_duration":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("expected a whole number of seconds greater than 0")
        return parse_duration(value)
    if not isinstance(value, str):
        if value is None and keyword in ("user_id", "identifier"):
            return None
        raise ValueError(f"expected a string, got {type(value).__name__}")
    if keyword == "redirect_url":
        return parse_http_url(value)
    if keyword in ("user_id", "identifier"):
        return parse_id(value)
    return parse_text(value)
