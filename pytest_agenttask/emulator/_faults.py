"""Injected faults and the Backend API rate limiter."""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque

__all__ = ["MAX_FAULT_DELAY", "Fault", "RateLimiter"]

MAX_FAULT_DELAY = 60.0


class Fault:
    """A fault injected with :meth:`ClerkEmulator.inject_fault`.

    It matches a request when every given criterion matches: ``api``, ``method``
    (case-insensitive), and ``path``, which matches the request path (without
    the query string) when it is equal to it *or* when it matches it as a
    regular expression with :func:`re.fullmatch`. It fires ``times`` times
    (``-1``: until cleared); :attr:`fired` counts the requests it affected.
    """

    def __init__(
        self,
        *,
        api: str | None = None,
        method: str | None = None,
        path: str | None = None,
        status: int | None = None,
        code: str | None = None,
        body: str | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        drop: bool = False,
        processed: bool = False,
        times: int = 1,
    ) -> None:
        if api not in (None, "backend", "frontend"):
            raise ValueError(f"api must be 'backend', 'frontend' or None, not {api!r}")
        if status is not None and not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx code, not {status!r}")
        if status is not None and drop:
            raise ValueError("a fault either answers a status or drops the connection")
        if (code is not None or body is not None or retry_after is not None) and status is None:
            raise ValueError("code, body and retry_after need a status")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if not 0.0 <= delay <= MAX_FAULT_DELAY:
            raise ValueError(f"delay must be between 0 and {MAX_FAULT_DELAY:g} seconds")
        if processed and status is None and not drop:
            raise ValueError("processed=True needs a status or drop=True to replace the answer")
        if status is None and not drop and delay == 0.0:
            raise ValueError("a fault needs a status, drop=True or a delay")
        if times == 0 or times < -1:
            raise ValueError("times must be positive, or -1 for every matching request")
        self.api = api
        self.method = method.upper() if method is not None else None
        self.path = path
        self.status = status
        self.code = code
        self.body = body
        self.retry_after = retry_after
        self.delay = delay
        self.drop = drop
        self.processed = processed
        self.times = times
        self._pattern = _compile(path)
        self._fired = 0

    @property
    def fired(self) -> int:
        """How many requests this fault has affected so far."""
        return self._fired

    @property
    def exhausted(self) -> bool:
        """Whether the fault has fired ``times`` times and no longer applies."""
        return self.times != -1 and self._fired >= self.times

    @property
    def replaces_response(self) -> bool:
        return self.status is not None or self.drop

    @property
    def description(self) -> str:
        """A short label, as recorded in :attr:`RecordedRequest.fault`."""
        parts = []
        if self.delay:
            parts.append(f"delay={self.delay:g}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.drop:
            parts.append("drop")
        if self.processed:
            parts.append("processed")
        return ",".join(parts)

    def matches(self, api: str, method: str, path: str) -> bool:
        if self.api is not None and self.api != api:
            return False
        if self.method is not None and self.method != method.upper():
            return False
        if self.path is None or self.path == path:
            return True
        return self._pattern is not None and self._pattern.fullmatch(path) is not None

    def fire(self) -> None:
        """Count one affected request (the emulator calls this under its lock)."""
        self._fired += 1

    def __repr__(self) -> str:
        where = " ".join(str(x) for x in (self.api, self.method, self.path) if x is not None)
        return f"<Fault {self.description} on {where or 'any request'} fired={self._fired}>"


def _compile(path: str | None) -> re.Pattern[str] | None:
    if path is None:
        return None
    try:
        return re.compile(path)
    except re.error:
        return None  # not a regular expression: the path only matches exactly


class RateLimiter:
    """A sliding-window limit of ``requests`` per ``window`` seconds per key."""

    def __init__(self, requests: int, window: float) -> None:
        if requests < 1 or window <= 0:
            raise ValueError("the rate limit needs requests >= 1 and window > 0")
        self.requests = requests
        self.window = window
        self._lock = threading.Lock()
        self._hits: dict[str, deque[float]] = {}

    def acquire(self, key: str) -> int | None:
        """Take a slot for ``key``: ``None`` if granted, otherwise the whole
        seconds (at least 1) until one frees. Refused requests take no slot."""
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window:
                hits.popleft()
            if len(hits) < self.requests:
                hits.append(now)
                return None
            return max(1, math.ceil(hits[0] + self.window - now))

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()
