"""``asrctl verify --model DIR --smoke`` on the tiny fixture: one real engine start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.vllm


def test_smoke_transcribes_noise_through_the_engine(fun_asr_tiny):
    run = subprocess.run(
        [
            *(sys.executable, "-m", "asrctl", "verify", "--model", str(fun_asr_tiny), "--smoke"),
            *("--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"),
            *("--max-tokens", "8"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {
        cells[1].strip(): cells[2].strip()
        for cells in (line.split("│") for line in run.stdout.splitlines())
        if len(cells) >= 5
    }
    assert rows["smoke"] == "ok", run.stdout
    for name in ("python", "torch", "vllm", "model family", "tensor shapes", "tokenizer"):
        assert rows[name] == "ok", name
    assert "1 s of noise" in run.stdout and "tokens" in run.stdout
