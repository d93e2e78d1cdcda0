"""The pytest layer: options, hooks, marker, fixtures and reporting.

Enabled only with ``-p pytest_agenttask`` (or ``pytest_plugins``); importing it
opens no socket and imports no HTTP library. Everything that talks to Clerk
lives in :mod:`pytest_agenttask.client`; this module only wires it to pytest.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from . import hookspecs
from ._redact import Secret, mask_tickets
from .errors import AgentTaskError, ConfigurationError
from .ledger import TaskLedger, close_task, describe_error
from .models import AgentTask, TaskURL
from .settings import MARKER_KEYWORDS, Settings, load_settings, parse_marker_value, register_options

if TYPE_CHECKING:
    from .client import BackendClient
    from .emulator import ClerkEmulator

__all__ = ["AgentTaskFactory"]

_RUN = pytest.StashKey["_Run"]()
_MARKER_HELP = (
    "agenttask(user_id=..., identifier=..., redirect_url=..., agent_name=..., "
    "task_description=..., session_max_duration=...): parameters of the Agent Tasks "
    "this test creates (pytest-agenttask)"
)


# -- run-wide resources ----------------------------------------------------------


class _Run:
    """What one pytest run owns: settings, the task ledger, and the lazily made
    emulator and client. Nothing here touches the network until a fixture asks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ledger = TaskLedger()
        self._lock = threading.Lock()
        self._emulator: ClerkEmulator | None = None
        self._client: BackendClient | None = None
        self._resolved: Settings | None = None

    def emulator(self) -> ClerkEmulator:
        with self._lock:
            if self._emulator is None:
                from .emulator import ClerkEmulator

                self._emulator = ClerkEmulator()
                self._emulator.start()
            return self._emulator

    def resolved_settings(self) -> Settings:
        """The settings with the emulator's URL, key, user and redirect filled in."""
        if self._resolved is not None:
            return self._resolved
        settings = self.settings
        if settings.emulator:
            emulator = self.emulator()
            sources = {**settings.sources, "api_url": "emulator", "secret_key": "emulator"}
            user_id, redirect_url = settings.user_id, settings.redirect_url
            if user_id is None and settings.identifier is None:
                user_id, sources["user_id"] = emulator.default_user_id, "emulator"
            if redirect_url is None:
                redirect_url, sources["redirect_url"] = emulator.default_redirect_url, "emulator"
            settings = dataclasses.replace(
                settings,
                api_url=emulator.api_url,
                secret_key=Secret(emulator.secret_key),
                user_id=user_id,
                redirect_url=redirect_url,
                sources=sources,
            )
        self._resolved = settings
        return settings

    def client(self) -> BackendClient | None:
        """The run's one Backend API client, or None when there is no secret key."""
        settings = self.resolved_settings()
        if settings.secret_key is None:
            return None
        with self._lock:
            if self._client is None:
                from .client import BackendClient

                self._client = BackendClient(
                    settings.secret_key,
                    api_url=settings.api_url,
                    timeout=settings.timeout,
                    retries=settings.retries,
                )
            return self._client

    @property
    def client_started(self) -> bool:
        return self._client is not None

    @property
    def emulator_started(self) -> ClerkEmulator | None:
        return self._emulator

    def sweep(self) -> None:
        """Close every task still open: those whose teardown failed or never ran."""
        leftovers = self.ledger.records("open", "failed")
        if not leftovers or self._client is None:
            return
        for record in leftovers:
            try:
                outcome = close_task(self._client, record.task.agent_task_id)
            except AgentTaskError as error:
                self.ledger.mark(record.task.agent_task_id, "failed", describe_error(error))
            else:
                self.ledger.mark(record.task.agent_task_id, outcome)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            emulator, self._emulator = self._emulator, None
        if client is not None:
            client.close()
        if emulator is not None:
            emulator.stop()


def _run(config: pytest.Config) -> _Run:
    return config.stash[_RUN]


def _fail(message: str) -> NoReturn:
    __tracebackhide__ = True
    pytest.fail(message, pytrace=False)


def _without_internals(error: AgentTaskError) -> AgentTaskError:
    """The error with our frames and its chain dropped, so ``--tb=long -l`` shows
    no internal locals (where a response body with a ticket could sit)."""
    error.__cause__ = None
    error.__context__ = None
    error.__suppress_context__ = True
    return error.with_traceback(None)


# -- the factory -------------------------------------------------------------------


class AgentTaskFactory:
    """Creates Agent Tasks for one test; the ``agent_task_factory`` fixture.

    Call it with marker keywords to override them for one task::

        task = agent_task_factory(user_id="user_123", redirect_url="http://localhost:8000/")

    Everything it made is revoked in the test's teardown.
    """

    def __init__(self, request: pytest.FixtureRequest, run: _Run, client: BackendClient) -> None:
        self._request = request
        self._run = run
        self._client = client
        self.tasks: list[AgentTask] = []

    def __repr__(self) -> str:
        return f"<AgentTaskFactory for {self._request.node.nodeid} made={len(self.tasks)}>"

    def __call__(self, **overrides: Any) -> AgentTask:
        """Create one task; keywords override the settings and the marker."""
        __tracebackhide__ = True
        try:
            return self._make(overrides)
        except AgentTaskError as error:
            raise _without_internals(error) from None

    def _make(self, overrides: Mapping[str, Any]) -> AgentTask:
        node = self._request.node
        params = task_params(self._run.resolved_settings(), node)
        _apply_layer(params, _validated(overrides, f"agent_task_factory() in {node.nodeid}"))
        hook = self._request.config.hook.pytest_agenttask_params
        hook(request=self._request, params=params)
        where = "the pytest_agenttask_params hook ({})".format(
            ", ".join(impl.plugin_name for impl in hook.get_hookimpls()) or "no implementation"
        )
        params = _validated(params, where, complete=True)
        user_id, identifier = params["user_id"], params["identifier"]
        if (user_id is None) == (identifier is None):
            raise ConfigurationError(
                f"{node.nodeid}: no user to sign in; set agenttask_user_id or "
                "agenttask_identifier, "
                "or pass user_id=... or identifier=... to the agenttask marker"
                if user_id is None
                else f"{node.nodeid}: {where} set both user_id and identifier; keep one"
            )
        if params["redirect_url"] is None:
            raise ConfigurationError(
                f"{node.nodeid}: no redirect URL; set agenttask_redirect_url or pass "
                "redirect_url=... to the agenttask marker"
            )
        task = self._client.create(
            agent_name=params["agent_name"],
            task_description=params["task_description"],
            redirect_url=params["redirect_url"],
            user_id=user_id,
            identifier=identifier,
            session_max_duration_in_seconds=params["session_max_duration"],
        )
        self._run.ledger.add(task, node.nodeid)
        self.tasks.append(task)
        self._request.config.hook.pytest_agenttask_created(request=self._request, task=task)
        return task

    def close(self) -> list[str]:
        """Close every task made; return one problem line per task left open."""
        problems = []
        for task in self.tasks:
            try:
                outcome = close_task(self._client, task.agent_task_id)
            except AgentTaskError as error:
                reason = describe_error(error)
                self._run.ledger.mark(task.agent_task_id, "failed", reason)
                problems.append(f"could not revoke Agent Task {task.agent_task_id}: {reason}")
                continue
            self._run.ledger.mark(task.agent_task_id, outcome)
            if outcome == "revoked":
                self._request.config.hook.pytest_agenttask_revoked(request=self._request, task=task)
        return problems


def _validated(values: Mapping[str, Any], where: str, *, complete: bool = False) -> dict[str, Any]:
    unknown = sorted(set(values) - set(MARKER_KEYWORDS))
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown keyword {unknown[0]!r}; expected one of {', '.join(MARKER_KEYWORDS)}"
        )
    if complete:
        missing = [key for key in MARKER_KEYWORDS if key not in values]
        if missing:
            raise ConfigurationError(
                f"{where}: removed parameter {missing[0]!r}; set it to a value"
            )
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if value is None and (complete or key in ("user_id", "identifier")):
            checked[key] = None
            continue
        try:
            checked[key] = parse_marker_value(key, value)
        except ValueError as error:
            shown = mask_tickets(repr(value))
            raise ConfigurationError(f"{where}: {key}={shown}: {error}") from None
    if (
        checked.get("user_id") is not None
        and checked.get("identifier") is not None
        and not complete
    ):
        raise ConfigurationError(
            f"{where}: both user_id and identifier given; Clerk signs in one user"
        )
    return checked


def _apply_layer(params: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Overlay one layer of parameters; user_id and identifier replace each other."""
    if "user_id" in layer or "identifier" in layer:
        params["user_id"] = layer.get("user_id")
        params["identifier"] = layer.get("identifier")
    for key, value in layer.items():
        if key not in ("user_id", "identifier"):
            params[key] = value


def _marker_layers(node: pytest.Item) -> list[tuple[str, Mapping[str, Any]]]:
    """The agenttask markers of a test, farthest (module) first."""
    layers = []
    for mark in reversed(list(node.iter_markers("agenttask"))):
        where = f"@pytest.mark.agenttask on {node.nodeid}"
        if mark.args:
            raise ConfigurationError(
                f"{where}: takes keywords only, got {len(mark.args)} positional argument(s)"
            )
        layers.append((where, mark.kwargs))
    return layers


def task_params(settings: Settings, node: pytest.Item) -> dict[str, Any]:
    """The create parameters of one test: settings, then markers (closest wins)."""
    module = getattr(getattr(node, "module", None), "__name__", "")
    params: dict[str, Any] = {
        "user_id": settings.user_id,
        "identifier": settings.identifier,
        "redirect_url": settings.redirect_url,
        "agent_name": settings.agent_name,
        "task_description": settings.task_description.format(
            nodeid=node.nodeid, name=node.name, module=module
        ),
        "session_max_duration": settings.session_max_duration,
    }
    for where, kwargs in _marker_layers(node):
        _apply_layer(params, _validated(kwargs, where))
    return params


# -- hooks -------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    register_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)
    config.stash[_RUN] = _Run(load_settings(config))


def pytest_report_header(config: pytest.Config) -> str:
    return f"agenttask: {_run(config).settings.target}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Check every agenttask marker before any test runs."""
    for item in items:
        try:
            for where, kwargs in _marker_layers(item):
                _validated(kwargs, where)
        except ConfigurationError as error:
            raise pytest.UsageError(f"pytest-agenttask: {error}") from None


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """Compare task URLs without printing their tickets."""
    if not isinstance(left, (TaskURL, AgentTask)) and not isinstance(right, (TaskURL, AgentTask)):
        return None

    def show(value: object) -> str:
        return mask_tickets(repr(value))

    return [f"{show(left)} {op} {show(right)}", "(pytest-agenttask masks task tickets in reports)"]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # trylast: pytest has already torn every fixture down, so only what a
    # teardown failed to close (or never reached, after Ctrl-C) is left.
    run = session.config.stash.get(_RUN, None)
    if run is not None:
        run.sweep()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    run = config.stash.get(_RUN, None)
    if run is None or not len(run.ledger):
        return
    counts = run.ledger.counts()
    left_open = run.ledger.records("open", "failed")
    parts = [f"{len(run.ledger)} Agent Task(s) created", f"{counts['revoked']} revoked"]
    if counts["consumed"]:
        parts.append(f"{counts['consumed']} already used (task closed, its session still active)")
    if counts["gone"]:
        parts.append(f"{counts['gone']} already gone")
    parts.append(f"{len(left_open)} left open")
    emulator = run.emulator_started
    if emulator is not None:
        parts.append(f"emulator: {len(emulator.pending_tasks())} pending")
    terminalreporter.write_sep("-", "agenttask")
    terminalreporter.write_line("agenttask: " + ", ".join(parts), red=bool(left_open))
    for record in left_open:
        terminalreporter.write_line(
            f"  left open: {record.task.agent_task_id} ({record.nodeid}): "
            f"{record.error or 'never closed'}",
            red=True,
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is not None:
        run.close()


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def agenttask_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved settings (with the emulator's URL and key when it is used)."""
    return _run(pytestconfig).resolved_settings()


@pytest.fixture(scope="session")
def clerk_emulator(pytestconfig: pytest.Config) -> ClerkEmulator:
    """The run's embedded Clerk emulator (needs ``--agenttask-emulator``)."""
    run = _run(pytestconfig)
    if not run.settings.emulator:
        _fail(
            "clerk_emulator needs the embedded emulator: run with --agenttask-emulator or set "
            "agenttask_emulator = true (or start your own with "
            "pytest_agenttask.emulator.ClerkEmulator)"
        )
    return run.emulator()


@pytest.fixture(scope="session")
def agenttask_client(pytestconfig: pytest.Config) -> BackendClient:
    """The run's Backend API client; skips (or fails) the test when no secret key is set."""
    run = _run(pytestconfig)
    client = run.client()
    if client is None:
        settings = run.settings
        reason = (
            f"Clerk secret key not set: export {settings.secret_key_env} "
            "(the variable named by agenttask_secret_key_env) or run with --agenttask-emulator"
        )
        if settings.missing_key == "fail":
            _fail(reason)
        pytest.skip(reason)
    return client


@pytest.fixture
def agent_task_factory(
    request: pytest.FixtureRequest, agenttask_client: BackendClient
) -> Generator[AgentTaskFactory, None, None]:
    """``make(**overrides) -> AgentTask``; everything made is revoked at teardown."""
    factory = AgentTaskFactory(request, _run(request.config), agenttask_client)
    yield factory
    problems = factory.close()
    if problems:
        _fail("; ".join(problems) + " (retried once more at the end of the run)")


@pytest.fixture
def agent_task(request: pytest.FixtureRequest, agent_task_factory: AgentTaskFactory) -> AgentTask:
    """A fresh Agent Task for this test, revoked in its teardown."""
    return _created(agent_task_factory, "agent_task")


@pytest.fixture
def agent_task_url(agent_task: AgentTask) -> TaskURL:
    """The URL of this test's Agent Task (its ``repr`` masks the ticket)."""
    assert agent_task.url is not None
    return agent_task.url


def _created(factory: Callable[[], AgentTask], fixture: str) -> AgentTask:
    __tracebackhide__ = True
    try:
        return factory()
    except AgentTaskError as error:
        _fail(f"{fixture}: {error}")
