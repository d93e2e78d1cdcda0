"""The pytest layer: options, hooks, marker, fixtures and reporting.

Enabled only with ``-p pytest_agenttask`` (or ``pytest_plugins``); importing it
opens no socket and imports no HTTP library. Everything that talks to Clerk
lives in :mod:`pytest_agenttask.client`; this module only wires it to pytest.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import threading
from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest

from . import hookspecs
from ._redact import Secret, install_log_filter, mask_tickets
from .errors import AgentTaskError, ConfigurationError
from .settings import MARKER_KEYWORDS, Settings, load_settings, parse_marker_value, register_options

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from ._leftovers import LeftoverFiles
    from .client import BackendClient
    from .emulator import ClerkEmulator
    from .ledger import BackgroundCloser, Closer, TaskLedger
    from .models import AgentTask, TaskURL
    from .session import AgentSession, AsyncAgentSession, SignIn

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

    def __init__(self, settings: Settings, leftovers_dir: Path | None = None) -> None:
        self.settings = settings
        # Under pytest-xdist the controller gets each worker's summary.
        self.worker_summaries: list[tuple[str, dict[str, Any]]] = []
        self._record_lock = threading.Lock()
        self._leftovers: LeftoverFiles | None = None
        if leftovers_dir is not None and not settings.emulator and settings.secret_key:
            # An emulator dies with its run, so only a real Clerk needs the record.
            from ._leftovers import LeftoverFiles, instance_fingerprint

            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            fingerprint = instance_fingerprint(settings.api_url, settings.secret_key.reveal())
            self._leftovers = LeftoverFiles(leftovers_dir, worker, fingerprint)
        self._lock = threading.Lock()
        self._emulator: ClerkEmulator | None = None
        self._client: BackendClient | None = None
        self._frontend: httpx.Client | None = None
        self._resolved: Settings | None = None
        # Sign-ins shared by the tests of a module or of the run (agenttask_session_scope).
        self.shared: dict[tuple[Any, ...], AgentSession | AsyncAgentSession] = {}

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
            if self._client is None or self._client.closed:  # a test may have closed it
                from .client import BackendClient

                self._client = BackendClient(
                    settings.secret_key,
                    api_url=settings.api_url,
                    timeout=settings.timeout,
                    retries=settings.retries,
                )
            return self._client

    @property
    def emulator_started(self) -> ClerkEmulator | None:
        return self._emulator

    # The ledgers and the closer thread are made on first use: a run that never
    # creates a task does not even import them.

    @functools.cached_property
    def ledger(self) -> TaskLedger:
        """What this run created, and how each thing was closed."""
        from .ledger import TaskLedger

        return TaskLedger(on_change=self._record if self._leftovers is not None else None)

    @functools.cached_property
    def recovered(self) -> TaskLedger:
        """What earlier, killed runs left open and this one closed."""
        from .ledger import TaskLedger

        return TaskLedger()

    @functools.cached_property
    def background(self) -> BackgroundCloser:
        from .ledger import BackgroundCloser

        return BackgroundCloser()

    def made(self, name: str) -> bool:
        """Whether the lazily made ``ledger``, ``recovered`` or ``background`` exists."""
        return name in vars(self)

    def _record(self, ledger: TaskLedger) -> None:
        if self._leftovers is not None:
            with self._record_lock:  # the snapshot and its write, in one piece
                self._leftovers.write(ledger.open_snapshot())

    def close_leftovers(self) -> None:
        """Close what killed earlier runs against this Clerk instance left open."""
        if self._leftovers is None:
            return
        records = self._leftovers.take_all()
        if not records:
            return
        for record in records:
            self.recovered.restore(record, "(left open by an earlier run)")
        client = self.client()
        if client is not None:
            from .ledger import Closer

            Closer(client, self.recovered).sweep()

    def frontend_http(self) -> httpx.Client:
        """One pooled client for visiting task URLs (the Frontend API), kept cookie-free."""
        with self._lock:
            if self._frontend is None:
                from urllib.parse import urlsplit

                import httpx

                # No proxy from the environment for a loopback Clerk (the emulator).
                host = urlsplit(self.resolved_settings().api_url).hostname
                loopback = host in ("127.0.0.1", "localhost", "::1")
                from .client import shared_ssl_context

                self._frontend = httpx.Client(
                    timeout=self.settings.timeout,
                    trust_env=not loopback,
                    verify=shared_ssl_context(),
                )
            return self._frontend

    def sweep(self) -> None:
        """Close whatever is still open: what a teardown failed to close or never reached."""
        # What is still queued for the background closer is closed first; the
        # bound is generous (each job retries), and what outlives it is swept.
        if self.made("background"):
            self.background.drain(timeout=max(60.0, self.settings.timeout * 30))
        client = self.client() if self._client is not None else None
        if client is not None:
            from .ledger import Closer

            Closer(client, self.ledger).sweep()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            frontend, self._frontend = self._frontend, None
            emulator, self._emulator = self._emulator, None
        if client is not None:
            client.close()
        if frontend is not None:
            frontend.close()
        if emulator is not None:
            emulator.stop()


def _run(config: pytest.Config) -> _Run:
    run = config.stash.get(_RUN, None)
    if run is None:
        # pytest keeps the fixtures of a plugin a later `-p no:` unregistered.
        _fail("pytest-agenttask is disabled in this run (-p no:pytest_agenttask)")
    return run


def _fail(message: str) -> NoReturn:
    """Fail the test with one line; ``from None``, so no chained exception is shown."""
    __tracebackhide__ = True
    raise pytest.fail.Exception(message, pytrace=False) from None


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
        task = self.create(self.resolve(overrides), owner=self._request.node.nodeid)
        self.tasks.append(task)
        return task

    def resolve(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The create parameters for this test: settings, markers, ``overrides``,
        then the ``pytest_agenttask_params`` hooks; validated."""
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
        return params

    def create(self, params: Mapping[str, Any], *, owner: str) -> AgentTask:
        """Create a task from resolved ``params``; the run's ledger records it under
        ``owner`` (the node id whose end closes it)."""
        client = self._run.client() or self._client  # a test may have closed the fixture's
        task = client.create(
            agent_name=params["agent_name"],
            task_description=params["task_description"],
            redirect_url=params["redirect_url"],
            user_id=params["user_id"],
            identifier=params["identifier"],
            session_max_duration_in_seconds=params["session_max_duration"],
        )
        self._run.ledger.add(
            task, owner, user_id=params["user_id"], identifier=params["identifier"]
        )
        self._request.config.hook.pytest_agenttask_created(request=self._request, task=task)
        return task

    def close(self) -> list[str]:
        """Close every task made, the sessions they opened, and the sessions of those
        a test used itself; return one problem line per thing left open. The
        ``pytest_agenttask_revoked`` hooks run after everything is closed."""
        from .ledger import Closer

        ledger = self._run.ledger
        closer = Closer(self._run.client() or self._client, ledger)
        if self._run.settings.close == "background":
            tasks = list(self.tasks)
            self._run.background.submit(lambda: _close_all(closer, ledger, tasks))
            return []
        problems, revoked = _close_all(closer, ledger, self.tasks)
        hook = self._request.config.hook.pytest_agenttask_revoked
        errors = []
        for task in revoked:
            try:
                hook(request=self._request, task=task)
            except Exception as error:  # re-raised below, once every hook has run
                errors.append(error)
        if errors:
            raise errors[0]
        return problems


def _close_all(
    closer: Closer, ledger: TaskLedger, tasks: list[AgentTask]
) -> tuple[list[str], list[AgentTask]]:
    """Close one test's tasks, then the sessions they opened (including one a fixture
    opened but could not hand over, its setup having failed). Return one problem line
    per thing left open, and the tasks that were pending and are now revoked."""
    problems: list[str] = []
    revoked: list[AgentTask] = []
    for task in tasks:
        record = ledger.record(task.agent_task_id)
        was_pending = record.state == "open"
        problems.append(closer.close_task(record) or "")
        if was_pending and record.state == "revoked":
            revoked.append(task)
    mine = {task.agent_task_id for task in tasks}
    for session in ledger.sessions("active", "failed"):
        if session.agent_task_id in mine:
            problems.append(closer.close_session(session) or "")
    return [problem for problem in problems if problem], revoked


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


@pytest.hookimpl(trylast=True)  # after the cache provider has set config.cache
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)
    settings = load_settings(config)
    cache = getattr(config, "cache", None)
    leftovers = None
    if cache is not None and settings.secret_key is not None and not settings.emulator:
        leftovers = cache.mkdir("agenttask-open")
    if settings.emulator:
        _check_emulator_extra()
    config.stash[_RUN] = _Run(settings, leftovers)
    install_log_filter()  # httpx logs request URLs: a test's own visit must not show its ticket
    _stop_on_sigterm(config)


def _check_emulator_extra() -> None:
    import importlib.util

    missing = [name for name in ("cryptography", "jwt") if importlib.util.find_spec(name) is None]
    if missing:
        raise pytest.UsageError(
            "pytest-agenttask: agenttask_emulator needs the emulator's extra dependencies "
            f"({', '.join(missing)} missing): pip install 'pytest-agenttask[emulator]'"
        )


def _stop_on_sigterm(config: pytest.Config) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so a terminated run still tears down
    (and closes what it opened) as after Ctrl-C. A handler of the user's stays."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"pytest-agenttask: received signal {signum} (SIGTERM)")

    def restore() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(restore)


@pytest.hookimpl(tryfirst=True)  # before the terminal prints the report header
def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        session.config.stash[_RUN].close_leftovers()


def _recovered_line(run: _Run) -> str | None:
    if not run.made("recovered") or not len(run.recovered):
        return None
    recovered = run.recovered
    closed = len(recovered) - len(recovered.unresolved())
    sessions = len(recovered.sessions("revoked"))
    return (
        f"agenttask: closed what an earlier, killed run left open: {closed} of "
        f"{len(recovered)} Agent Task(s), {sessions} session(s)"
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = _run(config)
    recovered = _recovered_line(run)
    return [f"agenttask: {run.settings.target}", *([recovered] if recovered else [])]


_MARKER_ERROR = pytest.StashKey[str]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Check every agenttask marker before any test runs."""
    # Whether a node or one of its parents has the marker, once per module and
    # class rather than once per test: most suites have thousands of unmarked tests.
    marked: dict[int, bool] = {}

    def has_marker(node: pytest.Item | pytest.Collector) -> bool:
        if any(mark.name == "agenttask" for mark in node.own_markers):
            return True
        parent = node.parent
        if parent is None:
            return False
        if id(parent) not in marked:
            marked[id(parent)] = has_marker(parent)
        return marked[id(parent)]

    for item in items:
        if not has_marker(item):
            continue
        try:
            for where, kwargs in _marker_layers(item):
                _validated(kwargs, where)
        except ConfigurationError as error:
            if os.environ.get("PYTEST_XDIST_WORKER") is None:
                raise pytest.UsageError(f"pytest-agenttask: {error}") from None
            # A pytest-xdist worker cannot stop the run cleanly: fail the test instead.
            item.stash[_MARKER_ERROR] = f"pytest-agenttask: {error}"


def pytest_runtest_setup(item: pytest.Item) -> None:
    error = item.stash.get(_MARKER_ERROR, None)
    if error is not None:
        _fail(error)


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """Compare task URLs without printing their tickets."""
    from .models import AgentTask, TaskURL

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
    if run is None:
        return
    run.sweep()
    left_open = 0
    if run.made("ledger"):
        left_open = len(run.ledger.unresolved()) + len(run.ledger.sessions("active", "failed"))
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None and run.made("ledger") and len(run.ledger):  # xdist worker
        workeroutput["agenttask"] = {"lines": summary_lines(run), "left_open": left_open}
    left_open += sum(summary["left_open"] for _, summary in run.worker_summaries)
    if left_open and session.exitstatus == pytest.ExitCode.OK:
        # A live login link left behind is a failure of the run, even when every
        # test passed (with agenttask_close = background no teardown reported it).
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist: keep what a worker reports, for the controller's summary."""
    summary = getattr(node, "workeroutput", {}).get("agenttask")
    if summary:
        _run(node.config).worker_summaries.append((str(node.gateway.id), summary))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    run = config.stash.get(_RUN, None)
    if run is None:
        return
    made = (run.made("ledger") and len(run.ledger)) or (
        run.made("recovered") and len(run.recovered)
    )
    lines = summary_lines(run) if made else []
    for worker, summary in sorted(run.worker_summaries):
        lines += [f"[{worker}] {line}" for line in summary["lines"]]
    if not lines:
        return
    terminalreporter.write_sep("-", "agenttask")
    left_open = any("  left open:" in line for line in lines)
    for line in lines:
        terminalreporter.write_line(line, red=left_open)


def summary_lines(run: _Run) -> list[str]:
    """What the plugin did in this run: a count line, then one line per thing left open."""
    ledger = run.ledger
    counts = ledger.counts()
    sessions = ledger.sessions()
    unresolved = ledger.unresolved()
    open_sessions = ledger.sessions("active", "failed")
    text = f"agenttask: {len(ledger)} Agent Task(s) created: {counts['revoked']} revoked"
    if counts["consumed"]:
        text += f", {counts['consumed']} used to sign in"
    if counts["gone"]:
        text += f", {counts['gone']} already gone"
    if sessions:
        revoked = len(sessions) - len(open_sessions)
        text += f"; {revoked} of {len(sessions)} session(s) revoked"
    text += f"; {len(unresolved) + len(open_sessions)} left open"
    emulator = run.emulator_started
    if emulator is not None:
        text += (
            f"; emulator: {len(emulator.pending_tasks())} pending task(s), "
            f"{len(emulator.active_sessions())} active session(s)"
        )
    lines = [text]
    recovered = _recovered_line(run)
    if recovered:
        lines.append(recovered)
    for record in [*unresolved, *run.recovered.unresolved()]:
        what = "Agent Task" if record.state != "consumed" else "sessions of used Agent Task"
        lines.append(
            f"  left open: {what} {record.task.agent_task_id} ({record.nodeid}): "
            f"{record.error or 'never closed'}"
        )
    for session in [*open_sessions, *run.recovered.sessions("active", "failed")]:
        lines.append(
            f"  left open: session {session.session_id} of {session.agent_task_id} "
            f"({session.nodeid}): {session.error or 'never closed'}"
        )
    return lines


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


def _signed_in(request: pytest.FixtureRequest, factory: AgentTaskFactory, fixture: str) -> SignIn:
    """Create a task and visit its URL as a browser would: one Frontend API request."""
    __tracebackhide__ = True
    task = _created(factory, fixture)
    return _visit(_run(request.config), task, fixture)


def _visit(run: _Run, task: AgentTask, fixture: str) -> SignIn:
    __tracebackhide__ = True
    from .session import sign_in

    try:
        signed = sign_in(task, http=run.frontend_http())
    except AgentTaskError as error:
        _fail(f"{fixture}: {error}")
    run.ledger.add_session(signed.session_id, task.agent_task_id)
    return signed


def _end_session(request: pytest.FixtureRequest, session: AgentSession | AsyncAgentSession) -> None:
    __tracebackhide__ = True
    run = _run(request.config)
    if run.settings.close == "background":
        run.background.submit(lambda: _close_quietly(run, session))
        return
    ledger = run.ledger
    try:
        session.close()
    except AgentTaskError as error:
        ledger.mark_session(session.session_id, "failed", str(error))
        _fail(
            f"could not revoke session {session.session_id}: {error} "
            "(retried once more at the end of the run)"
        )
    ledger.mark_session(session.session_id, "revoked")


_SessionType = TypeVar("_SessionType", "AgentSession", "AsyncAgentSession")


def _session_for(
    request: pytest.FixtureRequest,
    factory: AgentTaskFactory,
    client: BackendClient,
    kind: type[_SessionType],
    fixture: str,
) -> tuple[_SessionType, bool]:
    """A signed-in session for this test, and whether this test owns it.

    With ``agenttask_session_scope = module`` or ``session``, tests whose task
    parameters are the same (the description aside) share one sign-in, closed
    when their module or the run ends; a test whose marker asks for another
    user or redirect gets its own.
    """
    __tracebackhide__ = True
    run = _run(request.config)
    scope = run.settings.session_scope
    if scope == "function":
        signed = _signed_in(request, factory, fixture)
        return kind(factory.tasks[-1], signed, client), True
    try:
        params = factory.resolve({})
    except AgentTaskError as error:
        _fail(f"{fixture}: {error}")
    owner: pytest.Item | pytest.Collector | pytest.Session = request.session
    if scope == "module":
        owner = request.node.getparent(pytest.Module) or request.session
    shared_params = tuple(sorted((k, v) for k, v in params.items() if k != "task_description"))
    key = (kind.__name__, owner.nodeid, shared_params)
    cached = run.shared.get(key)
    if isinstance(cached, kind) and not cached.closed:
        return cached, False
    try:
        task = factory.create(params, owner=owner.nodeid or "(the whole run)")
    except AgentTaskError as error:
        _fail(f"{fixture}: {error}")
    signed = _visit(run, task, fixture)
    session = kind(task, signed, client)
    run.shared[key] = session
    owner.addfinalizer(lambda: _close_quietly(run, session))
    return session, False


def _close_quietly(run: _Run, session: AgentSession | AsyncAgentSession) -> None:
    """Close a shared session when its scope ends; a failure is left to the sweep
    and the terminal summary (no test owns it to fail)."""
    try:
        session.close()
    except AgentTaskError as error:
        run.ledger.mark_session(session.session_id, "failed", str(error))
    else:
        run.ledger.mark_session(session.session_id, "revoked")


@pytest.fixture
def agent_session(
    request: pytest.FixtureRequest,
    agent_task_factory: AgentTaskFactory,
    agenttask_client: BackendClient,
) -> Generator[AgentSession, None, None]:
    """A signed-in session: ``.client`` (an ``httpx.Client`` on the app's origin that
    keeps the session's token fresh), ``.task``, ``.session_id``, ``.user_id``, ``.token()``.
    The session is revoked at teardown (or at the end of its module or of the run,
    with ``agenttask_session_scope``)."""
    from .session import AgentSession

    session, owned = _session_for(
        request, agent_task_factory, agenttask_client, AgentSession, "agent_session"
    )
    yield session
    if owned:
        _end_session(request, session)


@pytest.fixture
def async_agent_session(
    request: pytest.FixtureRequest,
    agent_task_factory: AgentTaskFactory,
    agenttask_client: BackendClient,
) -> Generator[AsyncAgentSession, None, None]:
    """``agent_session`` over ``httpx.AsyncClient`` (``await session.token()``).

    A plain fixture, so it serves tests run by pytest-asyncio (strict or auto
    mode), by anyio's plugin, or by ``asyncio.run`` alike."""
    from .session import AsyncAgentSession

    session, owned = _session_for(
        request, agent_task_factory, agenttask_client, AsyncAgentSession, "async_agent_session"
    )
    yield session
    if owned:
        _end_session(request, session)


@pytest.fixture
def agent_page(
    request: pytest.FixtureRequest,
    agent_task_factory: AgentTaskFactory,
    agenttask_client: BackendClient,
) -> Generator[Any, None, None]:
    """A Playwright page (pytest-playwright's ``page``) that visited the task URL
    and landed on the redirect URL signed in; the session is revoked at teardown."""
    try:
        page = request.getfixturevalue("page")
    except pytest.FixtureLookupError:
        _fail(
            "agent_page needs pytest-playwright: pip install pytest-playwright "
            "(or pytest-agenttask[browser]) and a browser for it to drive"
        )
    run = _run(request.config)
    if run.settings.session_scope != "function":
        # A shared sign-in: the page gets its cookies (with a fresh token) and
        # lands on the redirect URL, with no request to Clerk at all.
        from .session import AgentSession

        shared, _ = _session_for(
            request, agent_task_factory, agenttask_client, AgentSession, "agent_page"
        )
        page.context.add_cookies(shared.cookies)
        page.goto(shared.signed_in.landing_url)
        yield page
        return
    task = _created(agent_task_factory, "agent_page")
    ledger = run.ledger
    signed = _browser_sign_in(
        page, task, lambda s: ledger.add_session(s.session_id, task.agent_task_id)
    )
    yield page
    from .ledger import Closer

    closer = Closer(run.client() or agenttask_client, ledger)
    record = ledger.session(signed.session_id)
    if run.settings.close == "background":
        run.background.submit(lambda: closer.close_session(record))
        return
    problem = closer.close_session(record)
    if problem:
        _fail(f"{problem} (retried once more at the end of the run)")


def _browser_sign_in(page: Any, task: AgentTask, on_signed: Callable[[SignIn], object]) -> SignIn:
    """Visit the task URL in the page and resolve the development handshake of its
    redirect as Clerk's middleware would: cookies for the app, then a clean URL.

    Playwright does not route the requests of a redirect chain, so the task URL
    itself is routed: fetched as it is, and answered with the middleware's
    redirect. The browser keeps the cookies both hosts set, as after a real visit.
    """
    __tracebackhide__ = True
    from .session import sign_in_from_redirect

    assert task.url is not None
    url = str(task.url)
    signed: list[SignIn] = []
    problems: list[str] = []

    def visit(route: Any) -> None:
        response = route.fetch(max_redirects=0)
        try:
            result = sign_in_from_redirect(
                response.status, response.headers, response.body(), url=url
            )
        except AgentTaskError as error:
            problems.append(str(error))
            route.abort()
            return
        signed.append(result)
        on_signed(result)
        cookies = [(c, result.app_origin) for c in result.cookies]
        if result.fapi_origin:
            cookies += [(c, result.fapi_origin) for c in result.fapi_cookies]
        page.context.add_cookies(
            [{"name": c.name, "value": c.value, "url": origin} for c, origin in cookies]
        )
        route.fulfill(
            status=307, headers={"Location": result.landing_url, "Cache-Control": "no-store"}
        )

    def is_task_url(candidate: str) -> bool:
        return candidate == url

    page.route(is_task_url, visit)
    try:
        page.goto(url)
    except Exception as error:  # Playwright's errors quote the URL, ticket included
        if not problems:
            problems.append(f"{type(error).__name__}: {mask_tickets(str(error)).splitlines()[0]}")
    finally:
        page.unroute(is_task_url, visit)
    if problems or not signed:
        _fail(f"agent_page: {'; '.join(problems) or 'the task URL was never visited'}")
    return signed[0]
