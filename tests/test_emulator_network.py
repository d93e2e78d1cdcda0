"""The emulator's network model over real loopback sockets: a latency on every
request, a connection cost on each new connection, the counts and timings that
show what was paid, and a ``stop()`` that stays prompt."""

from __future__ import annotations

import http.client
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from pytest_agenttask.emulator import ClerkEmulator, RecordedRequest
from pytest_agenttask.emulator.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
LATENCY = 0.05
CONNECT_COST = 0.1
# Lower bounds are exact (the emulator sleeps at least that long); upper bounds
# are only used with a wide margin, as a loaded machine can be slow.
SLACK = 0.15


@pytest.fixture
def clerk() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as emulator:
        yield emulator


def _connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    assert parts.hostname is not None
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)


def _timed_get(
    connection: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None
) -> tuple[int, float]:
    """One GET on an open (or not yet open) connection: (status, seconds)."""
    start = time.perf_counter()
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    return response.status, time.perf_counter() - start


def _jwks(clerk: ClerkEmulator) -> tuple[str, dict[str, str]]:
    return "/v1/jwks", {"Authorization": f"Bearer {clerk.secret_key}"}


def _signed_in_page() -> str:
    return "/__emulator/signed-in"


# -- configuration --------------------------------------------------------------


def test_the_network_model_is_off_by_default(clerk: ClerkEmulator) -> None:
    assert clerk.latency == 0.0
    assert clerk.connect_cost == 0.0
    response = httpx.get(f"{clerk.api_url}/jwks", headers=_jwks(clerk)[1], timeout=5)
    assert response.status_code == 200
    [record] = clerk.requests
    assert record.network_delay == 0.0
    assert record.finished_at is not None
    assert record.finished_at >= record.at


def test_the_constructor_takes_both_and_they_are_settable() -> None:
    emulator = ClerkEmulator(latency=0.25, connect_cost=1)
    assert (emulator.latency, emulator.connect_cost) == (0.25, 1.0)
    assert isinstance(emulator.connect_cost, float)
    emulator.latency = 0
    emulator.connect_cost = 0.5
    assert (emulator.latency, emulator.connect_cost) == (0.0, 0.5)


@pytest.mark.parametrize("name", ["latency", "connect_cost"])
@pytest.mark.parametrize("value", [-0.01, float("nan"), float("inf")])
def test_bad_values_are_refused(name: str, value: float) -> None:
    kwargs: dict[str, Any] = {name: value}
    with pytest.raises(ValueError, match=name):
        ClerkEmulator(**kwargs)
    emulator = ClerkEmulator()
    with pytest.raises(ValueError, match=name):
        setattr(emulator, name, value)
    assert getattr(emulator, name) == 0.0


@pytest.mark.parametrize("name", ["latency", "connect_cost"])
@pytest.mark.parametrize("value", [True, "0.05", None])
def test_values_that_are_not_numbers_are_refused(name: str, value: Any) -> None:
    with pytest.raises(TypeError, match=name):
        ClerkEmulator(**{name: value})


# -- latency --------------------------------------------------------------------


@pytest.mark.parametrize("api", ["backend", "frontend"])
def test_every_request_takes_at_least_the_latency(clerk: ClerkEmulator, api: str) -> None:
    clerk.latency = LATENCY
    if api == "backend":
        url = clerk.api_url
        path, headers = _jwks(clerk)
    else:
        url, path, headers = clerk.frontend_api_url, _signed_in_page(), {}
    connection = _connect(url)
    try:
        durations = []
        for _ in range(3):
            status, seconds = _timed_get(connection, path, headers)
            assert status == 200
            durations.append(seconds)
    finally:
        connection.close()
    assert min(durations) >= LATENCY
    records = clerk.requests
    assert [r.api for r in records] == [api] * 3
    for record in records:
        assert record.network_delay == pytest.approx(LATENCY)
        assert record.duration is not None
        assert record.duration >= LATENCY


def test_errors_pay_the_latency_too(clerk: ClerkEmulator) -> None:
    clerk.latency = LATENCY
    start = time.perf_counter()
    response = httpx.post(f"{clerk.api_url}/agents/tasks", json={}, timeout=5)  # no key: 401
    assert response.status_code == 401
    assert time.perf_counter() - start >= LATENCY


def test_a_changed_latency_applies_to_the_next_request(clerk: ClerkEmulator) -> None:
    path, headers = _jwks(clerk)
    with httpx.Client(base_url=clerk.api_url.removesuffix("/v1"), timeout=5) as client:
        client.get(path, headers=headers)  # opens the connection
        clerk.latency = LATENCY
        start = time.perf_counter()
        assert client.get(path, headers=headers).status_code == 200
        assert time.perf_counter() - start >= LATENCY
        clerk.latency = 0.0
        client.get(path, headers=headers)
    assert [r.network_delay for r in clerk.requests] == [0.0, LATENCY, 0.0]


def test_concurrent_requests_on_separate_connections_overlap(clerk: ClerkEmulator) -> None:
    """The latency is a delay, not a queue: round trips in parallel cost one."""
    clerk.latency = 0.2
    path, headers = _jwks(clerk)
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            assert httpx.get(f"{clerk.api_url}/jwks", headers=headers, timeout=10).is_success
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    elapsed = time.perf_counter() - start
    assert not errors
    assert elapsed >= 0.2
    assert elapsed < 4 * 0.2  # not serialised
    assert clerk.request_count(api="backend", path=path) == 4


# -- connection cost ------------------------------------------------------------


@pytest.mark.parametrize("api", ["backend", "frontend"])
def test_a_new_connection_pays_the_connect_cost_once(clerk: ClerkEmulator, api: str) -> None:
    clerk.latency = LATENCY
    clerk.connect_cost = CONNECT_COST
    if api == "backend":
        url = clerk.api_url
        path, headers = _jwks(clerk)
    else:
        url, path, headers = clerk.frontend_api_url, _signed_in_page(), {}
    connection = _connect(url)
    try:
        _, first = _timed_get(connection, path, headers)
        _, second = _timed_get(connection, path, headers)  # kept alive
        _, third = _timed_get(connection, path, headers)
    finally:
        connection.close()
    assert first >= LATENCY + CONNECT_COST
    assert second >= LATENCY
    assert third >= LATENCY
    # Reuse does not pay it again (checked exactly in the log; by the clock with a margin).
    assert min(second, third) < LATENCY + CONNECT_COST + SLACK
    records = clerk.requests
    assert [r.new_connection for r in records] == [True, False, False]
    assert len({r.connection for r in records}) == 1
    assert [r.network_delay for r in records] == pytest.approx(
        [LATENCY + CONNECT_COST, LATENCY, LATENCY]
    )
    assert clerk.connection_count(api) == 1  # type: ignore[arg-type]
    assert clerk.connections_opened == 1


def test_each_new_connection_pays_again(clerk: ClerkEmulator) -> None:
    clerk.connect_cost = CONNECT_COST
    path, headers = _jwks(clerk)
    durations = []
    for _ in range(2):
        connection = _connect(clerk.api_url)
        try:
            durations.append(_timed_get(connection, path, headers)[1])
        finally:
            connection.close()
    assert min(durations) >= CONNECT_COST
    records = clerk.requests
    assert [r.new_connection for r in records] == [True, True]
    assert records[0].connection != records[1].connection
    assert clerk.connection_count("backend") == 2
    assert clerk.connection_count("frontend") == 0


def test_an_httpx_client_pools_one_connection_per_api(clerk: ClerkEmulator) -> None:
    """What the benchmark relies on: a pooled client opens one connection per
    host and pays the cost once; the request log says which request paid."""
    clerk.latency = 0.01
    clerk.connect_cost = CONNECT_COST
    path, headers = _jwks(clerk)
    with httpx.Client(timeout=5) as client:
        for _ in range(3):
            assert client.get(clerk.api_url + "/jwks", headers=headers).is_success
            assert client.get(clerk.frontend_api_url + _signed_in_page()).is_success
    assert clerk.connection_count("backend") == 1
    assert clerk.connection_count("frontend") == 1
    assert clerk.connections_opened == 2
    paid = [r for r in clerk.requests if r.new_connection]
    assert sorted(r.api for r in paid) == ["backend", "frontend"]
    assert {r.path for r in paid} == {path, _signed_in_page()}


def test_reset_forgets_the_connection_counts_but_keeps_the_model(clerk: ClerkEmulator) -> None:
    clerk.latency = 0.01
    clerk.connect_cost = 0.02
    httpx.get(clerk.frontend_api_url + _signed_in_page(), timeout=5)
    assert clerk.connections_opened == 1
    clerk.reset()
    assert clerk.connections_opened == 0
    assert clerk.requests == []
    assert (clerk.latency, clerk.connect_cost) == (0.01, 0.02)


def test_connection_count_refuses_an_unknown_api(clerk: ClerkEmulator) -> None:
    with pytest.raises(ValueError, match="api"):
        clerk.connection_count("admin")  # type: ignore[arg-type]


def test_a_fault_delay_adds_to_the_latency(clerk: ClerkEmulator) -> None:
    clerk.latency = LATENCY
    clerk.inject_fault(path="/v1/jwks", delay=LATENCY)
    _, headers = _jwks(clerk)
    start = time.perf_counter()
    assert httpx.get(clerk.api_url + "/jwks", headers=headers, timeout=5).status_code == 200
    assert time.perf_counter() - start >= 2 * LATENCY
    [record] = clerk.requests
    assert record.fault == f"delay={LATENCY:g}"
    assert record.network_delay == pytest.approx(LATENCY)


def test_the_recorded_request_keeps_its_old_shape() -> None:
    """Code that builds a RecordedRequest with the six original fields still works."""
    record = RecordedRequest("backend", "GET", "/v1/jwks", 200, None, 1.0)
    assert (record.finished_at, record.duration, record.network_delay) == (None, None, 0.0)
    assert (record.connection, record.new_connection) == (0, False)


# -- stop() stays prompt ----------------------------------------------------------


@pytest.mark.parametrize("model", ["latency", "connect_cost"])
def test_stop_interrupts_the_network_waits(model: str) -> None:
    kwargs: dict[str, Any] = {model: 30.0}
    emulator = ClerkEmulator(**kwargs)
    emulator.start()
    url = f"{emulator.api_url}/jwks"
    headers = {"Authorization": f"Bearer {emulator.secret_key}"}
    outcome: queue.Queue[object] = queue.Queue()

    def fetch() -> None:
        try:
            outcome.put(httpx.get(url, headers=headers, timeout=20).status_code)
        except httpx.HTTPError as error:
            outcome.put(error)

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not emulator.requests_in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emulator.requests_in_flight == 1
    start = time.perf_counter()
    emulator.stop()
    assert time.perf_counter() - start < 3
    thread.join(timeout=10)
    assert isinstance(outcome.get(timeout=1), httpx.HTTPError)  # cut, never answered
    [record] = emulator.requests
    assert record.status is None


# -- the command ------------------------------------------------------------------


def test_the_command_takes_the_network_model(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[ClerkEmulator] = []

    class Recording(ClerkEmulator):
        def start(self) -> None:
            made.append(self)
            raise OSError("not listening in this test")

    monkeypatch.setattr("pytest_agenttask.emulator.__main__.ClerkEmulator", Recording)
    assert main(["--latency", "0.05", "--connect-cost", "0.1"]) == 1
    [emulator] = made
    assert (emulator.latency, emulator.connect_cost) == (0.05, 0.1)


@pytest.mark.parametrize("flag", ["--latency", "--connect-cost"])
def test_the_command_refuses_a_negative_value(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([flag, "-1"]) == 2
    name = flag.removeprefix("--").replace("-", "_")
    assert re.search(f"error: {name} must be", capsys.readouterr().err)


def test_the_command_runs_with_latency() -> None:
    command = [
        sys.executable,
        "-m",
        "pytest_agenttask.emulator",
        "--latency",
        str(LATENCY),
        "--connect-cost",
        str(CONNECT_COST),
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    ) as process:
        try:
            assert process.stdout is not None
            printed = dict(
                process.stdout.readline().rstrip("\n").partition("=")[::2] for _ in range(5)
            )
            headers = {"Authorization": f"Bearer {printed['CLERK_SECRET_KEY']}"}
            with httpx.Client(timeout=10) as client:
                start = time.perf_counter()
                client.get(f"{printed['CLERK_API_URL']}/jwks", headers=headers)
                first = time.perf_counter() - start
                start = time.perf_counter()
                client.get(f"{printed['CLERK_API_URL']}/jwks", headers=headers)
                second = time.perf_counter() - start
            assert first >= LATENCY + CONNECT_COST
            assert second >= LATENCY
            process.terminate()
            assert process.wait(timeout=10) == 0
            assert process.stderr is not None
            assert "latency 0.05 s per request, 0.1 s per new connection" in process.stderr.read()
        finally:
            if process.poll() is None:
                process.kill()
