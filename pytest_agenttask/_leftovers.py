"""What a run has open, on disk, so that the next run can close what a killed one left.

One JSON file per process (a plain run, or each pytest-xdist worker) in a folder
of pytest's cache. It holds ids only (tasks, sessions, users), never a URL, a
ticket or a key, and names the Clerk instance by a one-way fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["LeftoverFiles", "instance_fingerprint"]


def instance_fingerprint(api_url: str, secret_key: str) -> str:
    """Which Clerk instance a record belongs to, without storing the key."""
    return hashlib.sha256(f"{api_url}\0{secret_key}".encode()).hexdigest()[:24]


class LeftoverFiles:
    """The records in one folder; this process writes ``<name>.json``."""

    def __init__(self, directory: Path, name: str, instance: str) -> None:
        self._directory = directory
        self._path = directory / f"{name}.json"
        self._instance = instance
        self._lock = threading.Lock()  # the background closer writes too

    def write(self, snapshot: Mapping[str, Any]) -> None:
        """Replace this process's record (atomically); remove it when nothing is open."""
        with self._lock:
            if not any(snapshot.values()):
                with contextlib.suppress(FileNotFoundError):
                    self._path.unlink()
                return
            temporary = self._path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"instance": self._instance, **snapshot}))
            os.replace(temporary, self._path)

    def take_all(self) -> list[dict[str, Any]]:
        """Read and remove every record of this instance (those of other instances stay)."""
        found = []
        for path in sorted(self._directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("instance") == self._instance:
                found.append(data)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return found
