"""The type check of the lint step (README, Development): ``mypy asrctl benchmarks``
passes, so CI (which runs only pytest) enforces it. Its settings are pyproject.toml's
``[tool.mypy]`` (``asrctl/fixtures/`` left out)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("mypy", reason="mypy is not installed (the test extra has it)")
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_asrctl_and_benchmarks_pass_mypy() -> None:
    done = _mypy("asrctl", "benchmarks")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout


def test_mypy_config_still_reports_errors(tmp_path: Path) -> None:
    """The project's settings do not silence real errors (a guard on the check above)."""
    bad = tmp_path / "bad.py"
    bad.write_text('count: int = "three"\n')
    done = _mypy("--config-file", str(ROOT / "pyproject.toml"), str(bad))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Incompatible types in assignment" in done.stdout
