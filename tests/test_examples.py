"""The example suite (examples/) passes against the embedded emulator and leaves nothing open."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPECTED_PASSED = 14


def _missing() -> str | None:
    if importlib.util.find_spec("flask") is None:
        return "flask is not installed: pip install -r examples/requirements.txt"
    if shutil.which("chromium") is None:
        return "no chromium on this machine: apt-get install chromium"
    return None


def test_the_example_suite_passes_and_leaves_nothing_open() -> None:
    missing = _missing()
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the examples: {missing}")
        pytest.skip(missing)
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("CLERK_SECRET_KEY", "EXAMPLES_SECOND_USER", "PYTEST_ADDOPTS")
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--agenttask-emulator", "-p", "no:cacheprovider"],
        cwd=EXAMPLES,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # On old pytest-asyncio releases the ini names an unknown option: a warning, not a failure.
    counts = re.search(r"^=+ (\d+) passed(?:, \d+ warnings?)? in [\d.]+s", output, re.MULTILINE)
    assert counts is not None, output
    assert int(counts.group(1)) == EXPECTED_PASSED, output
    assert re.search(
        r"^agenttask: \d+ Agent Task\(s\) created: .*; 0 left open; "
        r"emulator: 0 pending task\(s\), 0 active session\(s\)$",
        output,
        re.MULTILINE,
    ), output
