"""What a test pays for a Clerk Agent Task, four ways, against one emulator with latency.

    python bench/performance.py [--tests N] [--repeat K] [--latency 0.05] [--quick]

One run starts one :class:`ClerkEmulator` on loopback whose network model makes
every request cost ``--latency`` seconds (one round trip) and every new TCP
connection ``--connect-cost`` more (TCP + TLS set-up; default two round trips,
as TCP's handshake plus TLS 1.3's). It then runs the same small suite, N tests
that each need a task and N tests that each need a signed-in session, as pytest
subprocesses on generated files, these ways:

- ``plugin``: this plugin, ``-p pytest_agenttask`` pointed at the emulator as at
  Clerk (``agent_task_url``, ``agent_session``);
- ``sdk/test``: a hand-written fixture on the official SDK ``clerk-backend-api``
  as its operation examples show it, ``with Clerk(...) as clerk:`` per test; the
  task URL visited with ``httpx.get``;
- ``sdk/run``: the same with one ``Clerk`` and one ``httpx.Client`` per run, as
  the SDK's "Resource Management" section advises;
- ``httpx``: a hand-written fixture on plain httpx making the contract's minimum
  requests in order over one pooled client (the floor for doing them in order);
- ``none``: fixtures that return a constant (the suite's own cost).

Every way runs once per repetition, interleaved; the table gives medians. It
also measures what enabling the plugin costs a suite that never uses it
(``pytest --collect-only`` on 2,000 trivial tests, with and without
``-p pytest_agenttask``) and whether that imported httpx, started a thread or
opened a socket. Results are printed and written to ``bench/PERFORMANCE.md``.
Definitions are in that file, and in :data:`DEFINITIONS` below.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pytest_agenttask.emulator import ClerkEmulator, RecordedRequest  # noqa: E402

RESULTS_MARKER = "<!-- results: newest first; bench/performance.py inserts here -->"
SUITES = ("task", "session")
RUN_TIMEOUT = 300.0  # seconds for one pytest subprocess (a hang must not hang the bench)

# --------------------------------------------------------------------------- #
# The generated suite
# --------------------------------------------------------------------------- #

# Loaded by every way (and by the unused-plugin suite): per-test timestamps.
TIMING_CONFTEST = """
import json
import os
import time

import pytest

_TESTS = []
_OUTCOMES = {}


def pytest_runtest_logstart(nodeid, location):
    _TESTS.append({"nodeid": nodeid, "start": time.time(), "end": None})


def pytest_runtest_logfinish(nodeid, location):
    for test in reversed(_TESTS):
        if test["nodeid"] == nodeid:
            test["end"] = time.time()
            break


def pytest_runtest_logreport(report):
    if report.failed or (report.when == "call" and not report.passed):
        _OUTCOMES[report.nodeid] = report.outcome + " in " + report.when
    elif report.skipped:
        _OUTCOMES[report.nodeid] = "skipped in " + report.when


@pytest.hookimpl(hookwrapper=True)
def pytest_unconfigure(config):
    yield  # after every plugin's own unconfigure (clients closed, threads joined)
    with open(os.environ["BENCH_TIMINGS"], "w", encoding="utf-8") as out:
        json.dump({"tests": _TESTS, "problems": _OUTCOMES, "unconfigured": time.time()}, out)
"""

HANDWRITTEN_HEADER = """
import os

import pytest

API_URL = os.environ["BENCH_API_URL"]          # the Backend API, /v1 included
SECRET_KEY = os.environ["CLERK_SECRET_KEY"]
USER_ID = os.environ["BENCH_USER_ID"]
REDIRECT_URL = os.environ["BENCH_REDIRECT_URL"]


def task_body(request):
    return {
        "on_behalf_of": {"user_id": USER_ID},
        "permissions": "*",
        "agent_name": "bench",
        "task_description": request.node.nodeid,
        "redirect_url": REDIRECT_URL,
    }
"""

# (b1) the official SDK as its per-operation examples show it: `with Clerk(...)`.
SDK_PER_TEST = """
import httpx
from clerk_backend_api import Clerk


@pytest.fixture
def agent_task_url(request):
    with Clerk(bearer_auth=SECRET_KEY, server_url=API_URL) as clerk:
        task = clerk.agent_tasks.create(request=task_body(request))
        yield task.url
        clerk.agent_tasks.revoke(agent_task_id=task.agent_task_id)


@pytest.fixture
def agent_session(request):
    with Clerk(bearer_auth=SECRET_KEY, server_url=API_URL) as clerk:
        task = clerk.agent_tasks.create(request=task_body(request))
        visit = httpx.get(task.url)  # opens the session; 307 to the redirect URL
        assert visit.status_code == 307, visit.status_code
        yield visit
        # The used task cannot be revoked (Clerk answers 400); its session is found
        # by user and actor. SDK 7.0.0's Session.actor model keeps none of the
        # actor's fields (task_id is lost), so every active agent session of the
        # user is revoked: this test's, as the suite runs one test at a time.
        for session in clerk.sessions.list(user_id=USER_ID, status="active"):
            if session.actor is not None:
                clerk.sessions.revoke(session_id=session.id)
"""

# (b2) the same with one client per run, as the SDK's "Resource Management" advises.
SDK_PER_RUN = """
import httpx
from clerk_backend_api import Clerk


@pytest.fixture(scope="session")
def clerk():
    with Clerk(bearer_auth=SECRET_KEY, server_url=API_URL) as clerk:
        yield clerk


@pytest.fixture(scope="session")
def browser():
    with httpx.Client() as client:
        yield client


@pytest.fixture
def agent_task_url(request, clerk):
    task = clerk.agent_tasks.create(request=task_body(request))
    yield task.url
    clerk.agent_tasks.revoke(agent_task_id=task.agent_task_id)


@pytest.fixture
def agent_session(request, clerk, browser):
    task = clerk.agent_tasks.create(request=task_body(request))
    visit = browser.get(task.url)  # opens the session; 307 to the redirect URL
    assert visit.status_code == 307, visit.status_code
    yield visit
    # See sdk/test: the SDK's Session.actor drops task_id.
    for session in clerk.sessions.list(user_id=USER_ID, status="active"):
        if session.actor is not None:
            clerk.sessions.revoke(session_id=session.id)
"""

# (c) plain httpx: the contract's minimum requests, in order, one pooled client.
HTTPX_FLOOR = """
import base64
import json
from urllib.parse import parse_qs, urlsplit

import httpx

AUTH = {"Authorization": "Bearer " + SECRET_KEY}


def claims(jwt):
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="session")
def http():
    with httpx.Client(timeout=10) as client:  # one keep-alive connection per host
        yield client


def create(http, request):
    response = http.post(API_URL + "/agents/tasks", headers=AUTH, json=task_body(request))
    response.raise_for_status()
    return response.json()


@pytest.fixture
def agent_task_url(request, http):
    task = create(http, request)
    yield task["url"]
    revoke = http.post(API_URL + "/agents/tasks/" + task["agent_task_id"] + "/revoke", headers=AUTH)
    revoke.raise_for_status()


@pytest.fixture
def agent_session(request, http):
    task = create(http, request)
    visit = http.get(task["url"])  # 307 with the development handshake
    assert visit.status_code == 307, visit.status_code
    handshake = parse_qs(urlsplit(visit.headers["location"]).query)["__clerk_handshake"][0]
    cookie = next(c for c in claims(handshake)["handshake"] if c.startswith("__session="))
    session_id = claims(cookie.split(";")[0].partition("=")[2])["sid"]  # no lookup needed
    yield session_id
    http.post(API_URL + "/sessions/" + session_id + "/revoke", headers=AUTH).raise_for_status()
"""

# (d) no Clerk at all: the same tests, fixtures that return a constant.
NO_FIXTURE = """
@pytest.fixture
def agent_task_url():
    return "http://127.0.0.1/v1/agents/tasks?ticket=none"


@pytest.fixture
def agent_session():
    return "sess_none"
"""

TEST_BODIES = {
    "task": "def test_task_{i:03d}(agent_task_url):\n    assert agent_task_url\n",
    "session": "def test_session_{i:03d}(agent_session):\n    assert agent_session\n",
}


@dataclass(frozen=True)
class Way:
    name: str
    label: str
    conftest: str  # the way's fixtures (appended to the timing hooks)
    plugin: bool = False
    needs: str | None = None  # a module the way imports
    options: tuple[str, ...] = ()  # ini options of a plugin variant, passed with -o

    @property
    def directory(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name).strip("-")


def variant(spec: str) -> Way:
    """A plugin way with ini options: ``agenttask_close=background[,key=value...]``."""
    options = tuple(part.strip() for part in spec.split(",") if part.strip())
    if not options or not all(re.fullmatch(r"agenttask_\w+=\S+", o) for o in options):
        raise ValueError(f"expected agenttask_<key>=<value>[,...], got {spec!r}")
    short = ",".join(o.removeprefix("agenttask_") for o in options)
    return Way(
        f"plugin[{short}]", f"(a) this plugin, `{', '.join(options)}`", "", True, None, options
    )


WAYS = (
    Way("plugin", "(a) this plugin", "", plugin=True),
    Way("sdk/test", "(b) SDK, `with Clerk()` per test", SDK_PER_TEST, needs="clerk_backend_api"),
    Way("sdk/run", "(b) SDK, one `Clerk` per run", SDK_PER_RUN, needs="clerk_backend_api"),
    Way("httpx", "(c) plain httpx, pooled", HTTPX_FLOOR),
    Way("none", "(d) no fixture", NO_FIXTURE),
)

# The contract's minimum per test: (Backend API, Frontend API) requests.
MINIMUM_REQUESTS = {"task": (2, 0), "session": (2, 1)}


def write_suite(directory: Path, way: Way, tests: int) -> None:
    directory.mkdir(parents=True)
    (directory / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # rootdir: no project ini
    conftest = TIMING_CONFTEST
    if not way.plugin:
        conftest += HANDWRITTEN_HEADER + way.conftest
    (directory / "conftest.py").write_text(conftest, encoding="utf-8")
    for suite, body in TEST_BODIES.items():
        text = "\n\n".join(body.format(i=i) for i in range(tests))
        (directory / f"test_{suite}.py").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- #
# Running and measuring
# --------------------------------------------------------------------------- #


PYCACHE_PREFIX: Path | None = None  # set by main(): bytecode caches in the temporary directory


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a pytest subprocess: no user configuration, no other
    plugins, and bytecode cached as in an ordinary checkout (but outside it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CLERK_"))}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only what a run asks for with -p
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if PYCACHE_PREFIX is not None:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class RunResult:
    """One way, one suite, one repetition."""

    wall_per_test: float  # seconds: (last end - first start) / N, requests included
    median_test: float  # seconds: median of one test's logstart -> logfinish
    first_test: float  # seconds: the first test's logstart -> logfinish
    critical_path: float  # round trips per test on its critical path (see DEFINITIONS)
    in_window: float  # requests per test that finished during the test
    in_flight: float  # seconds per test with at least one request in flight
    outside: float  # requests per test outside every test's window
    backend: float  # Backend API requests per test
    frontend: float  # Frontend API requests per test
    connections: int  # TCP connections opened during the run (both APIs)
    connections_backend: int
    connections_frontend: int
    left_open: int  # pending tasks + active sessions after the run
    requests: list[tuple[str, ...]] = field(default_factory=list)  # one test's, for show


def run_pytest(
    directory: Path, args: Sequence[str], env: dict[str, str], timings: Path
) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    try:
        result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
            command,
            cwd=directory,
            env={**env, "BENCH_TIMINGS": str(timings)},
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise SystemExit(f"bench: {' '.join(command)} took over {RUN_TIMEOUT:g} s") from error
    if result.returncode != 0 or not timings.exists():
        raise SystemExit(
            f"bench: {' '.join(command)} (in {directory}) exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    data: dict[str, Any] = json.loads(timings.read_text(encoding="utf-8"))
    timings.unlink()
    if data["problems"]:
        raise SystemExit(f"bench: tests did not pass in {directory}: {data['problems']}")
    return data


def chain(intervals: list[tuple[float, float]]) -> int:
    """The most requests in the list that ran one after another (pairwise
    non-overlapping): round trips that could not have been overlapped."""
    count, free_at = 0, float("-inf")
    for start, end in sorted(intervals, key=lambda interval: interval[1]):
        if start >= free_at:
            count, free_at = count + 1, end
    return count


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None and current_start is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None and current_start is not None:
        total += current_end - current_start
    return total


def measure(
    tests: list[dict[str, Any]], requests: list[RecordedRequest], clerk: ClerkEmulator
) -> RunResult:
    n = len(tests)
    windows = [(float(t["start"]), float(t["end"])) for t in tests]
    spans = [(r.at, r.finished_at if r.finished_at is not None else r.at) for r in requests]
    start = min([w[0] for w in windows] + [s[0] for s in spans])
    end = max([w[1] for w in windows] + [s[1] for s in spans])
    # Each request belongs to the test during whose window it finished (its answer
    # arrived while that test ran); the others finished outside every test.
    finished_in: list[list[int]] = [[] for _ in windows]
    outside = 0
    for i, (_, e) in enumerate(spans):
        owner = next((k for k, (ws, we) in enumerate(windows) if ws <= e <= we), None)
        if owner is None:
            outside += 1
        else:
            finished_in[owner].append(i)
    critical, counted, in_flight = 0, 0, 0.0
    shown: list[tuple[str, ...]] = []
    for index, (w_start, w_end) in enumerate(windows):
        mine = sorted(finished_in[index], key=lambda i: spans[i][0])
        # On the path: what the test started and saw finish. A request begun before
        # the test (the previous test's revoke, left to a background thread) is not
        # one it waited for; it still counts in "reqs in window".
        critical += chain([spans[i] for i in mine if spans[i][0] >= w_start])
        counted += len(mine)
        in_flight += union_length(
            [(max(s, w_start), min(e, w_end)) for s, e in spans if s < w_end and e > w_start]
        )
        if index == n // 2:  # a test in the middle: its requests, for the notes
            for i in mine:
                r = requests[i]
                shown.append((r.api, r.method, _shape(r.path), str(r.status)))
    return RunResult(
        wall_per_test=(end - start) / n,
        median_test=statistics.median(e - s for s, e in windows),
        first_test=windows[0][1] - windows[0][0],
        critical_path=critical / n,
        in_window=counted / n,
        in_flight=in_flight / n,
        outside=outside / n,
        backend=sum(r.api == "backend" for r in requests) / n,
        frontend=sum(r.api == "frontend" for r in requests) / n,
        connections=clerk.connections_opened,
        connections_backend=clerk.connection_count("backend"),
        connections_frontend=clerk.connection_count("frontend"),
        left_open=len(clerk.pending_tasks()) + len(clerk.active_sessions()),
        requests=shown,
    )


def _shape(path: str) -> str:
    return re.sub(r"/(agttsk|sess)_[0-9A-Za-z]+", r"/{\1}", path)


def settle(clerk: ClerkEmulator) -> None:
    deadline = time.monotonic() + 5
    while clerk.requests_in_flight and time.monotonic() < deadline:
        time.sleep(0.01)


def run_way(
    clerk: ClerkEmulator, way: Way, directory: Path, suite: str, tests: int, *, warmup: bool = False
) -> RunResult:
    env = child_env(
        {
            "CLERK_SECRET_KEY": clerk.secret_key,
            "BENCH_API_URL": clerk.api_url,
            "BENCH_USER_ID": clerk.default_user_id,
            "BENCH_REDIRECT_URL": clerk.default_redirect_url,
        }
    )
    args = [f"test_{suite}.py"]
    if warmup:  # one test of each suite, to fill the bytecode caches; figures thrown away
        args = [f"test_{name}.py" for name in SUITES] + ["-k", "_000"]
        tests = len(SUITES)
    if way.plugin:
        args += [
            "-p",
            "pytest_agenttask",
            f"--agenttask-api-url={clerk.api_url}",
            f"--agenttask-user-id={clerk.default_user_id}",
            f"--agenttask-redirect-url={clerk.default_redirect_url}",
        ]
        for option in way.options:
            args += ["-o", option]
    settle(clerk)
    clerk.reset()
    data = run_pytest(directory, args, env, directory / "timings.json")
    settle(clerk)
    tests_run = data["tests"]
    if len(tests_run) != tests or any(t["end"] is None for t in tests_run):
        raise SystemExit(f"bench: {way.name}/{suite}: expected {tests} finished tests")
    clerk.check_errors()
    return measure(tests_run, clerk.requests, clerk)


# --------------------------------------------------------------------------- #
# Cheap when unused
# --------------------------------------------------------------------------- #

UNUSED_CONFTEST = """
import json
import os
import sys
import threading
import time

import pytest

_STATE = {}
_HOOK_SECONDS = [0.0]


def _sockets():
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    count = 0
    for fd in fds:
        try:
            count += os.readlink("/proc/self/fd/" + fd).startswith("socket:")
        except OSError:
            pass
    return count


def _timed(function):
    def timed(*args):
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            _HOOK_SECONDS[0] += time.perf_counter() - started

    return timed


def pytest_plugin_registered(plugin, manager):
    # When this conftest registers, time every hook of pytest_agenttask from now on
    # (pytest_addoption and pytest_addhooks have already run).
    if plugin is not sys.modules[__name__]:
        return
    agenttask = manager.get_plugin("pytest_agenttask")
    if agenttask is None:
        return
    for caller in manager.get_hookcallers(agenttask) or []:
        for impl in caller.get_hookimpls():
            if impl.plugin is agenttask and not (impl.hookwrapper or impl.wrapper):
                impl.function = _timed(impl.function)


def _snapshot():
    return {
        "modules": sorted(
            m for m in ("httpx", "httpcore", "h11", "anyio", "ssl") if m in sys.modules
        ),
        "threads": [t.name for t in threading.enumerate()],
        "sockets": _sockets(),
    }


def pytest_collection_finish(session):
    _STATE.update(_snapshot(), collected=len(session.items))


@pytest.hookimpl(hookwrapper=True)
def pytest_unconfigure(config):
    yield  # after every plugin's own unconfigure
    end = _snapshot()
    _STATE.update(
        plugin="pytest_agenttask.plugin" in sys.modules,
        hook_seconds=_HOOK_SECONDS[0],
        modules=sorted(set(_STATE["modules"]) | set(end["modules"])),
        threads_at_end=end["threads"],
        sockets_at_end=end["sockets"],
    )
    with open(os.environ["BENCH_UNUSED"], "w", encoding="utf-8") as out:
        json.dump(_STATE, out)
"""

IMPORT_TIMER = """
import time
import pytest  # what the plugin shares with every run is imported first
started = time.perf_counter()
import pytest_agenttask.plugin
print(time.perf_counter() - started)
"""


def write_unused_suite(directory: Path, tests: int, per_file: int = 50) -> None:
    directory.mkdir(parents=True)
    (directory / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (directory / "conftest.py").write_text(UNUSED_CONFTEST, encoding="utf-8")
    for file_index in range((tests + per_file - 1) // per_file):
        count = min(per_file, tests - file_index * per_file)
        body = "\n\n".join(f"def test_{i:03d}():\n    assert True\n" for i in range(count))
        (directory / f"test_unused_{file_index:03d}.py").write_text(body, encoding="utf-8")


@dataclass
class UnusedResult:
    tests: int
    repeat: int
    without: float  # median wall seconds of the whole process
    with_plugin: float
    ratio: float  # median of the paired ratios of wall time
    ratio_quartiles: tuple[float, float]
    cpu_without: float  # median CPU seconds (user + system) of the process
    cpu_with_plugin: float
    cpu_ratio: float  # median of the paired ratios of CPU time
    cpu_ratio_quartiles: tuple[float, float]
    import_seconds: float  # median: `import pytest_agenttask.plugin` after pytest's import
    hook_seconds: float  # median: time inside the plugin's hooks during the run
    state_with: dict[str, Any]
    state_without: dict[str, Any]
    instructions: tuple[int, int] | None = None  # callgrind: (without, with the plugin)

    @property
    def accounted_ratio(self) -> float:
        """The CPU time without the plugin plus what the plugin was measured doing."""
        return (self.cpu_without + self.import_seconds + self.hook_seconds) / self.cpu_without


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def run_unused(
    directory: Path, tests: int, repeat: int, *, instructions: bool = False
) -> UnusedResult:
    env = child_env({})
    state_file = directory / "state.json"
    env["BENCH_UNUSED"] = str(state_file)

    def run(command: list[str]) -> tuple[float, float, str]:
        cpu_before = children_cpu()
        started = time.perf_counter()
        result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
            command,
            cwd=directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(
                f"bench: {' '.join(command)} exited {result.returncode}:\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        return elapsed, children_cpu() - cpu_before, result.stdout

    def command(plugin: bool) -> list[str]:
        line = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
        return line + (["-p", "pytest_agenttask"] if plugin else [])

    def collect(plugin: bool) -> tuple[float, float, dict[str, Any]]:
        elapsed, cpu, _ = run(command(plugin))
        state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
        if state["collected"] != tests or state["plugin"] != plugin:
            raise SystemExit(f"bench: unexpected collection {state}")
        return elapsed, cpu, state

    collect(True)  # warm the file system and bytecode caches (the test files' and the plugin's)
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    hooks: list[float] = []
    state: dict[bool, dict[str, Any]] = {}
    for rep in range(repeat):
        for plugin in (False, True) if rep % 2 == 0 else (True, False):
            elapsed, seconds, state[plugin] = collect(plugin)
            wall[plugin].append(elapsed)
            cpu[plugin].append(seconds)
            if plugin:
                hooks.append(float(state[plugin]["hook_seconds"]))
    imports = [float(run([sys.executable, "-c", IMPORT_TIMER])[2].strip()) for _ in range(repeat)]
    counted: dict[bool, int] = {}
    if instructions:  # deterministic: one run of each under valgrind's callgrind
        for plugin in (False, True):
            out = directory / f"callgrind-{plugin}.out"
            run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command(plugin)])
            summary = re.search(r"^summary: (\d+)", out.read_text(encoding="utf-8"), re.M)
            if summary is None:
                raise SystemExit(f"bench: no callgrind summary in {out}")
            counted[plugin] = int(summary[1])
    wall_ratios = [w / wo for w, wo in zip(wall[True], wall[False], strict=True)]
    cpu_ratios = [w / wo for w, wo in zip(cpu[True], cpu[False], strict=True)]
    return UnusedResult(
        tests=tests,
        repeat=repeat,
        without=statistics.median(wall[False]),
        with_plugin=statistics.median(wall[True]),
        ratio=statistics.median(wall_ratios),
        ratio_quartiles=quartiles(wall_ratios),
        cpu_without=statistics.median(cpu[False]),
        cpu_with_plugin=statistics.median(cpu[True]),
        cpu_ratio=statistics.median(cpu_ratios),
        cpu_ratio_quartiles=quartiles(cpu_ratios),
        import_seconds=statistics.median(imports),
        hook_seconds=statistics.median(hooks),
        state_with=state[True],
        state_without=state[False],
        instructions=(counted[False], counted[True]) if counted else None,
    )


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by finished child processes."""
    try:
        import resource
    except ImportError:  # not on Unix
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------- #

USAGE = """\
Rerun from the repository's root, in the development environment (`.[dev]`, which has the
official SDK):

```bash
python bench/performance.py            # about 3 minutes on 2 cores
python bench/performance.py --quick    # about 1 minute: 5 tests per suite, 2 repetitions
python bench/performance.py --variant agenttask_close=background \\
    --variant agenttask_session_scope=session   # plugin settings as extra rows
python bench/performance.py --instructions     # + valgrind instruction counts (slow)
```

Other flags: `--tests N`, `--repeat K`, `--latency S`, `--connect-cost S`, `--ways`,
`--skip-unused`, `--no-write`, `--check` (exit 1 unless every target of issue 6 is met).
Each run prints its results and inserts them in this file below the marker, newest first;
what is above the marker is kept.
"""

DEFINITIONS = """\
How it is measured (bench/performance.py):

- **One emulator** (`pytest_agenttask.emulator.ClerkEmulator`) serves every way, with its
  network model on: each request of either API waits `latency` seconds before it is
  answered (one round trip; half before it is handled, half after) and the first request
  on each new TCP connection waits `connect_cost` more. The default `connect_cost` is two
  round trips: TCP's handshake plus TLS 1.3's (TLS 1.2 would be three). Clerk's rate limit
  is off, so nothing waits on a 429.
- **Each way is a pytest subprocess** (`-p no:cacheprovider`, plugin autoload disabled so
  that only what a way asks for with `-p` is loaded; bytecode cached, in the temporary
  directory, as in an ordinary checkout after its first run, and warmed by one unmeasured
  run of each way) on generated files in a temporary directory: N tests that each take
  `agent_task_url`, or N that each take `agent_session`, one suite per subprocess. A tiny
  conftest records when each test starts (`pytest_runtest_logstart`) and ends
  (`pytest_runtest_logfinish`, after its teardown is reported). The ways run interleaved,
  once per repetition; every figure is the median over the repetitions.
- **ms/test**: from the first test's start (or the first emulator request, if earlier) to
  the last test's end (or the end of the last emulator request, if later), divided by N.
  Interpreter start-up and collection are excluded; one-time costs inside the tests (the
  first connection, lazy imports) are spread over N, as in a real suite, and work deferred
  past the last test still counts. **x plugin** is that time over the plugin's.
- **median test / first test**: one test's start-to-end time (setup + call + teardown);
  the median is the steady state, the first one carries the one-time costs.
- **RT on path**: round trips on a test's critical path. A request belongs to the test
  during whose window (start to end, above) it finished, i.e. whose test was still running
  when its answer came; of the requests a test both started and saw finish, those that
  overlapped each other in time count once: the figure is the largest number of them that
  ran strictly one after another (interval scheduling on the emulator's receive-to-answer
  times). Requests made in order count one each; requests in parallel count once; a
  request begun before the test (an earlier test's work left to a background thread) is
  not on its path. A request the test started but did not wait for that still finished
  during it counts too (an upper bound).
  **reqs in window** is the plain count of the test's requests, and **outside** the
  requests per test that finished while no test ran (before the first, between two, or
  after the last: e.g. deferred work; they count in ms/test, not here). For a fixture that
  makes all its requests in its setup and teardown, RT on path is simply how many it makes.
- **waiting ms/test**: time per test with at least one request in flight (the union of
  the intervals of the requests overlapping its window, clipped to it): the network's
  share of the test's time; the rest of **median test** is local work.
- **BAPI / FAPI per test**: Backend / Frontend API requests the emulator received during
  the run, divided by N. Clerk's development instances allow 100 Backend API requests per
  10 s. **conns**: TCP connections opened during the run (Backend + Frontend API).
  **left open**: pending tasks plus active sessions after the run (must be 0).
- **Cheap when unused**: `pytest --collect-only -q` on a generated suite of trivial tests,
  with and without `-p pytest_agenttask`, no key and no emulator; the whole process's wall
  time and CPU time (user + system), interleaved, after one warm-up run; each ratio is the
  median of the paired ratios. A conftest records, after collection and again at exit,
  whether httpx (or httpcore, h11, anyio, ssl) is imported, the threads alive and the
  sockets open, and times the plugin's hook functions.
"""


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}"


def median_result(results: list[RunResult]) -> dict[str, float]:
    keys = [
        "wall_per_test",
        "median_test",
        "first_test",
        "critical_path",
        "in_window",
        "in_flight",
        "outside",
        "backend",
        "frontend",
        "connections",
        "connections_backend",
        "connections_frontend",
        "left_open",
    ]
    medians = {key: statistics.median(getattr(r, key) for r in results) for key in keys}
    medians["left_open_max"] = max(r.left_open for r in results)
    return medians


def results_table(
    ways: Sequence[Way], medians: dict[tuple[str, str], dict[str, float]]
) -> list[str]:
    lines = [
        "| suite | way | ms/test | x plugin | median test ms | first test ms | RT on path "
        "| reqs in window | outside | waiting ms/test | BAPI/test | FAPI/test | conns "
        "| left open |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for suite in SUITES:
        fixture = "agent_task_url" if suite == "task" else "agent_session"
        plugin = medians.get(("plugin", suite))
        for way in ways:
            m = medians.get((way.name, suite))
            if m is None:
                continue
            ratio = m["wall_per_test"] / plugin["wall_per_test"] if plugin else float("nan")
            lines.append(
                f"| {fixture} | {way.label} | {fmt(m['wall_per_test'] * 1000)} | "
                f"{fmt(ratio, 2)} | {fmt(m['median_test'] * 1000)} | "
                f"{fmt(m['first_test'] * 1000)} | {fmt(m['critical_path'], 2)} | "
                f"{fmt(m['in_window'], 2)} | {fmt(m['outside'], 2)} | "
                f"{fmt(m['in_flight'] * 1000)} | {fmt(m['backend'], 2)} | "
                f"{fmt(m['frontend'], 2)} | {m['connections']:g} "
                f"({m['connections_backend']:g}+{m['connections_frontend']:g}) | "
                f"{m['left_open_max']:g} |"
            )
    return lines


def criteria(
    medians: dict[tuple[str, str], dict[str, float]], unused: UnusedResult | None
) -> list[str]:
    """The issue's "done when", as measured (informational; --check makes it the exit status)."""
    lines: list[str] = []

    def line(ok: bool, text: str) -> None:
        lines.append(f"- [{'x' if ok else ' '}] {text}")

    order = sorted(medians, key=lambda key: (key[0] != "plugin", key[0], SUITES.index(key[1])))
    for name, suite in order:
        plugin = medians[(name, suite)]
        if not name.startswith("plugin"):
            continue
        fixture = "agent_task" if suite == "task" else "agent_session"
        if name != "plugin":
            fixture += f" ({name})"
        # Issue 6 compares with the SDK fixture as its docs show it (a `with Clerk()`
        # per call); one client per run is shown for reference, without a target.
        other = medians.get(("sdk/test", suite))
        if other is not None:
            speedup = other["wall_per_test"] / plugin["wall_per_test"]
            line(speedup >= 2, f"{fixture}: plugin {speedup:.2f}x as fast as sdk/test (needs 2x)")
        other = medians.get(("sdk/run", suite))
        if other is not None:
            speedup = other["wall_per_test"] / plugin["wall_per_test"]
            lines.append(f"- (for reference) {fixture}: plugin {speedup:.2f}x as fast as sdk/run")
        limit = 1 if suite == "task" else 2
        line(
            plugin["critical_path"] <= limit,
            f"{fixture}: {plugin['critical_path']:.2f} round trip(s) on the critical path "
            f"(at most {limit})",
        )
        backend, frontend = MINIMUM_REQUESTS[suite]
        line(
            plugin["backend"] <= backend and plugin["frontend"] <= frontend,
            f"{fixture}: {plugin['backend']:.2f} Backend + {plugin['frontend']:.2f} Frontend API "
            f"requests per test (contract minimum {backend} + {frontend})",
        )
        line(plugin["left_open_max"] == 0, f"{fixture}: nothing left open")
    if unused is not None:
        q1, q3 = unused.cpu_ratio_quartiles
        if unused.instructions is not None:
            without, with_plugin = unused.instructions
            line(
                with_plugin / without <= 1.05,
                f"enabled but unused: collect-only executes {with_plugin / without:.3f}x the "
                f"instructions of a run without the plugin (at most 1.05; CPU time "
                f"{unused.cpu_ratio:.3f}x, quartiles {q1:.3f}-{q3:.3f})",
            )
        else:
            line(
                unused.cpu_ratio <= 1.05,
                f"enabled but unused: collect-only takes {unused.cpu_ratio:.3f}x the CPU time "
                f"(quartiles {q1:.3f}-{q3:.3f}; wall {unused.ratio:.3f}x) of a run without "
                "the plugin (at most 1.05; noisy: --instructions counts them exactly)",
            )
        http = [m for m in unused.state_with["modules"] if m not in unused.state_without["modules"]]
        imported = ", ".join(http) or "none"
        line(not http, f"enabled but unused: no HTTP library imported ({imported})")
        extra_threads = max(
            len(unused.state_with[key]) - len(unused.state_without[key])
            for key in ("threads", "threads_at_end")
        )
        extra_sockets = max(
            (unused.state_with[key] or 0) - (unused.state_without[key] or 0)
            for key in ("sockets", "sockets_at_end")
        )
        line(
            extra_threads <= 0 and extra_sockets <= 0,
            f"enabled but unused: {max(extra_threads, 0)} extra thread(s), "
            f"{max(extra_sockets, 0)} extra socket(s)",
        )
    return lines


def machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = ""
    with contextlib.suppress(OSError):
        for cpu_line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if cpu_line.startswith("model name"):
                model = ", " + cpu_line.partition(":")[2].strip()
                break
    return (
        f"nproc {cpus}{model}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for dist in ("pytest", "httpx", "clerk-backend-api"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    return ", ".join(parts)


def report(
    *,
    args: argparse.Namespace,
    ways: Sequence[Way],
    skipped: list[str],
    medians: dict[tuple[str, str], dict[str, float]],
    samples: dict[tuple[str, str], RunResult],
    unused: UnusedResult | None,
    elapsed: float,
) -> str:
    now = datetime.datetime.now().astimezone()
    out = [
        f"## {now:%Y-%m-%d %H:%M %Z} — {machine()}",
        "",
        f"`{' '.join(['python', 'bench/performance.py', *args.argv])}` "
        f"({elapsed:.0f} s; {versions()}; git {git_revision()})",
        "",
        f"Emulator: latency {args.latency * 1000:g} ms per request, connect cost "
        f"{args.connect_cost * 1000:g} ms per new connection. N = {args.tests} tests per suite, "
        f"medians of {args.repeat} repetitions.",
        "",
        *results_table(ways, medians),
        "",
    ]
    if skipped:
        out += [f"Not run: {', '.join(skipped)}.", ""]
    out.append("Requests of one test in the middle of each suite (api method path status):")
    out.append("")
    for suite in SUITES:
        for way in ways:
            sample = samples.get((way.name, suite))
            if sample is not None:
                shown = "; ".join(" ".join(r) for r in sample.requests) or "none"
                out.append(f"- {suite}, {way.name}: {shown}")
    out.append("")
    if unused is not None:
        u = unused
        w_q1, w_q3 = u.ratio_quartiles
        c_q1, c_q3 = u.cpu_ratio_quartiles
        out += [
            f"Cheap when unused: `pytest --collect-only -q` on {u.tests} trivial tests, no key, "
            f"no emulator, {u.repeat} interleaved pairs (medians; ratios are medians of the "
            "paired ratios, with their quartiles):",
            "",
            "| | without the plugin | with `-p pytest_agenttask` | ratio (quartiles) |",
            "|---|---:|---:|---:|",
            f"| wall time | {u.without * 1000:.0f} ms | {u.with_plugin * 1000:.0f} ms "
            f"| {u.ratio:.3f} ({w_q1:.3f}-{w_q3:.3f}) |",
            f"| CPU time | {u.cpu_without * 1000:.0f} ms | {u.cpu_with_plugin * 1000:.0f} ms "
            f"| {u.cpu_ratio:.3f} ({c_q1:.3f}-{c_q3:.3f}) |",
            *(
                [
                    f"| instructions (callgrind, 1 run) | {u.instructions[0] / 1e6:,.0f} M "
                    f"| {u.instructions[1] / 1e6:,.0f} M "
                    f"| {u.instructions[1] / u.instructions[0]:.3f} |"
                ]
                if u.instructions is not None
                else []
            ),
            f"| identified (lower bound) | | + {u.import_seconds * 1000:.1f} ms import "
            f"+ {u.hook_seconds * 1000:.1f} ms in its hooks | {u.accounted_ratio:.3f} |",
            "",
            '"Identified" adds to the CPU time without the plugin what was seen the plugin '
            "doing: `import pytest_agenttask.plugin` timed in a fresh interpreter after "
            "`import pytest`, plus the time inside its hook functions during the run (wrapped "
            "by a conftest; pytest_addoption and pytest's own extra work for one more plugin "
            "are not in it), so it is a lower bound. Wall and CPU time of whole runs vary by "
            "10% or more from run to run on a busy shared machine; `--instructions` counts "
            "instructions with valgrind instead, which does not vary.",
            "",
            f"After collection with the plugin: HTTP modules "
            f"{u.state_with['modules'] or 'none (of httpx, httpcore, h11, anyio, ssl)'}; "
            f"threads {u.state_with['threads']}; sockets {u.state_with['sockets']}; at exit: "
            f"threads {u.state_with['threads_at_end']}, sockets {u.state_with['sockets_at_end']}. "
            f"Without: modules {u.state_without['modules'] or 'none'}, threads "
            f"{u.state_without['threads']}, sockets {u.state_without['sockets']}.",
            "",
        ]
    out += ["Issue 6's targets, as measured:", "", *criteria(medians, unused), ""]
    return "\n".join(out)


def git_revision() -> str:
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def write_markdown(path: Path, section: str) -> None:
    """Insert ``section`` after the results marker, above earlier runs. A file that
    exists keeps everything above the marker (definitions and notes, maybe edited)."""
    head = "# Performance: what a test pays for an Agent Task\n\n" + USAGE + "\n" + DEFINITIONS
    previous = ""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if RESULTS_MARKER in text:
            head, _, previous = text.partition(RESULTS_MARKER)
            previous = previous.lstrip("\n")
    body = section.rstrip("\n") + "\n" + ("\n" + previous if previous else "")
    path.write_text(head.rstrip("\n") + "\n\n" + RESULTS_MARKER + "\n\n" + body, encoding="utf-8")


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/performance.py",
        description="Per-test cost of Clerk Agent Tasks: this plugin vs hand-written fixtures.",
    )
    parser.add_argument("--tests", type=int, help="tests per suite (default 10; --quick 5)")
    parser.add_argument("--repeat", type=int, help="repetitions (default 5; --quick 2)")
    parser.add_argument(
        "--latency", type=float, default=0.05, help="seconds per round trip (default 0.05)"
    )
    parser.add_argument(
        "--connect-cost",
        type=float,
        help="seconds per new connection (default: 2 x latency, TCP + TLS 1.3 set-up)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer tests and repetitions")
    parser.add_argument(
        "--ways",
        default=",".join(w.name for w in WAYS),
        help=f"comma-separated subset of {','.join(w.name for w in WAYS)}",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="also run the plugin with these ini options (-o), e.g. agenttask_close=background; "
        "repeatable, one extra way each",
    )
    parser.add_argument(
        "--unused-tests", type=int, default=2000, help="size of the unused-plugin suite"
    )
    parser.add_argument(
        "--unused-repeat", type=int, help="collect-only pairs (default 6; --quick 4)"
    )
    parser.add_argument("--skip-unused", action="store_true", help="skip the unused-plugin part")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count the unused-plugin runs' instructions with valgrind (deterministic, "
        "about 2 minutes per 1,000 tests)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "bench" / "PERFORMANCE.md",
        help="markdown file to insert the results into",
    )
    parser.add_argument("--no-write", action="store_true", help="only print")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless every target of issue 6 is met"
    )
    args = parser.parse_args(argv)
    args.argv = list(argv)
    args.tests = args.tests or (5 if args.quick else 10)
    args.repeat = args.repeat or (2 if args.quick else 5)
    args.unused_repeat = args.unused_repeat or (4 if args.quick else 6)
    if args.connect_cost is None:
        args.connect_cost = 2 * args.latency
    if args.tests < 1 or args.repeat < 1 or args.unused_tests < 1 or args.unused_repeat < 1:
        parser.error("--tests, --repeat, --unused-tests and --unused-repeat must be >= 1")
    if not (0 <= args.latency <= 5 and 0 <= args.connect_cost <= 5):
        parser.error("--latency and --connect-cost must be between 0 and 5 seconds")
    names = [name.strip() for name in args.ways.split(",") if name.strip()]
    unknown = sorted(set(names) - {w.name for w in WAYS})
    if unknown or not names:
        parser.error(f"--ways: unknown {unknown}; choose from {[w.name for w in WAYS]}")
    args.way_names = names
    if args.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind")
    try:
        args.variants = [variant(spec) for spec in args.variant]
    except ValueError as error:
        parser.error(f"--variant: {error}")
    return args


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="agenttask-bench-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    skipped: list[str] = []
    ways: list[Way] = []
    for way in (*WAYS[:1], *args.variants, *WAYS[1:]):
        if way.name not in args.way_names and way.options == ():
            continue
        if way.needs and importlib.util.find_spec(way.needs) is None:
            skipped.append(f"{way.name} ({way.needs} is not installed)")
            continue
        ways.append(way)
    results: dict[tuple[str, str], list[RunResult]] = {}
    unused: UnusedResult | None = None
    with (
        workdir() as tmp,
        ClerkEmulator(latency=args.latency, connect_cost=args.connect_cost) as clerk,
    ):
        global PYCACHE_PREFIX  # noqa: PLW0603 - the subprocesses' environment
        PYCACHE_PREFIX = tmp / "pycache"
        for way in ways:
            write_suite(tmp / way.directory, way, args.tests)
        for way in ways:
            run_way(clerk, way, tmp / way.directory, "", 1, warmup=True)
        progress(f"warmed up: {len(ways)} way(s), {time.perf_counter() - started:.0f} s")
        for rep in range(args.repeat):
            shift = rep % len(ways)
            for way in ways[shift:] + ways[:shift]:  # rotate, so no way always runs first
                for suite in SUITES:
                    result = run_way(clerk, way, tmp / way.directory, suite, args.tests)
                    results.setdefault((way.name, suite), []).append(result)
                    progress(
                        f"[{rep + 1}/{args.repeat}] {way.name:9} {suite:8} "
                        f"{result.wall_per_test * 1000:7.1f} ms/test  "
                        f"{result.critical_path:.2f} RT  "
                        f"{result.backend:.2f}+{result.frontend:.2f} req"
                    )
        if not args.skip_unused:
            progress(f"collect-only on {args.unused_tests} tests, {args.unused_repeat} x 2 runs")
            write_unused_suite(tmp / "unused", args.unused_tests)
            unused = run_unused(
                tmp / "unused",
                args.unused_tests,
                args.unused_repeat,
                instructions=args.instructions,
            )
    medians = {key: median_result(value) for key, value in results.items()}
    samples = {key: value[-1] for key, value in results.items()}
    section = report(
        args=args,
        ways=ways,
        skipped=skipped,
        medians=medians,
        samples=samples,
        unused=unused,
        elapsed=time.perf_counter() - started,
    )
    print(section)
    if not args.no_write:
        write_markdown(args.output, section)
        progress(f"written to {args.output}")
    if args.check:
        return 0 if all(c.startswith("- [x]") for c in criteria(medians, unused)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
