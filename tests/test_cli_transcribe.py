"""``asrctl transcribe`` as a user runs it: a subprocess, real vLLM, files on disk.

Each run starts its own engine (about 40 s on CI's CPU), so the module keeps to four runs:
mixed good and bad inputs, a run killed mid-way, its resume, and stdout mode.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytestmark = pytest.mark.vllm

ENGINE_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]
MAX_TOKENS = 12


def asrctl(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asrctl", *args],
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _reference_texts(model_dir: Path, wavs: dict[str, Path]) -> dict[str, str]:
    """Greedy transcripts from transformers over asrctl's prompt embeddings (no vLLM)."""
    from transformers import AutoModelForCausalLM

    from asrctl.adapters.base import PromptOptions
    from asrctl.adapters.registry import load_adapter
    from asrctl.audio import load_audio
    from asrctl.engine import TextEmbedder
    from asrctl.export import prepare
    from asrctl.guard import truncate_loops

    llm_dir = prepare(model_dir).llm_dir
    adapter = load_adapter(model_dir)
    encoder = adapter.audio_encoder("cpu", torch.float32)
    embed = TextEmbedder(llm_dir, torch.float32)
    prompt = adapter.prompt(PromptOptions())
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()
    texts = {}
    with torch.inference_mode():
        for key, path in wavs.items():
            audio = torch.from_numpy(load_audio(path, sample_rate=16000))
            emb = torch.cat([embed(prompt.prefix), encoder([audio])[0], embed(prompt.suffix)])
            out = llm.generate(
                inputs_embeds=emb[None],
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                attention_mask=torch.ones(1, len(emb)).long(),
            )
            decoded = embed.tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
            # vLLM's incremental detokenizer withholds a trailing, incomplete UTF-8
            # sequence (cut by --max-tokens); a one-shot decode shows it as U+FFFD.
            # ... and every transcript goes through the repetition guard (asrctl.guard)
            texts[key] = truncate_loops(adapter.postprocess(decoded.rstrip("\ufffd")))[0]
    return texts


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A Kaldi wav.scp mixing formats and rates with three broken inputs."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(7)
    good = {
        "a_wav16k": ("a.wav", 16000, 1, 1.2),
        "b_flac": ("b.flac", 16000, 1, 2.1),
        "c_wav8k": ("c.wav", 8000, 1, 0.8),
        "d_stereo44k": ("d.wav", 44100, 2, 1.7),
    }
    lines = []
    for key, (name, sr, channels, seconds) in good.items():
        x = 0.1 * rng.standard_normal((int(sr * seconds), channels)).astype(np.float32)
        sf.write(root / name, x, sr)
        lines.append(f"{key} {root / name}")
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    sf.write(root / "nan.wav", np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    lines += [
        f"x_missing {root / 'missing.wav'}",
        f"y_corrupt {root / 'corrupt.wav'}",
        f"z_nan {root / 'nan.wav'}",
    ]
    (root / "wav.scp").write_text("\n".join(lines) + "\n")
    return root


def test_transcribe_writes_results_and_names_bad_inputs(fun_asr_tiny, data_dir, tmp_path):
    out = tmp_path / "out"
    run = asrctl(
        "transcribe",
        str(data_dir / "wav.scp"),
        "--model",
        str(fun_asr_tiny),
        "-o",
        str(out),
        "--max-tokens",
        str(MAX_TOKENS),
        "-b",
        "3",
        *ENGINE_FLAGS,
    )
    assert run.returncode == 1, run.stderr
    assert run.stdout == ""  # data went to files; nothing else on stdout
    for key in ("x_missing", "y_corrupt", "z_nan"):
        assert key in run.stderr
    assert "Traceback" not in run.stderr
    assert "4 transcribed, 3 failed" in run.stderr and "RTFx" in run.stderr
    rows = _rows(out / "results.jsonl")
    assert sorted(r["key"] for r in rows) == ["a_wav16k", "b_flac", "c_wav8k", "d_stereo44k"]
    assert {r["key"]: r["duration"] for r in rows} == {
        "a_wav16k": 1.2,
        "b_flac": 2.1,
        "c_wav8k": 0.8,
        "d_stereo44k": 1.7,
    }
    assert {r["key"] for r in _rows(out / "failed.jsonl")} == {"x_missing", "y_corrupt", "z_nan"}
    text = dict(line.split(" ", 1) for line in (out / "text").read_text().splitlines())
    assert text == {r["key"]: r["text"] for r in rows}
    wavs = {
        k: Path(v)
        for k, v in (line.split(" ", 1) for line in (data_dir / "wav.scp").read_text().splitlines())
        if k in text
    }
    assert text == _reference_texts(fun_asr_tiny, wavs)


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(3)
    lines = []
    for i in range(48):
        path = root / f"u{i:02d}.wav"
        sf.write(path, 0.1 * rng.standard_normal(int(16000 * (0.5 + i % 5 * 0.4))), 16000)
        lines.append(f"utt{i:02d} {path}")
    (root / "wav.scp").write_text("\n".join(lines) + "\n")
    return root / "wav.scp"


def test_killed_run_resumes_without_losing_or_duplicating_keys(fun_asr_tiny, many, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "asrctl",
        "transcribe",
        str(many),
        "--model",
        str(fun_asr_tiny),
        "-o",
        str(out),
        "-b",
        "1",
        "--max-tokens",
        str(MAX_TOKENS),
        *ENGINE_FLAGS,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and vLLM's engine processes
    proc.wait()
    done_before = results.read_text().count("\n")
    assert 3 <= done_before < 48, "the run must be killed mid-way"

    again = asrctl(
        "transcribe",
        str(many),
        "--model",
        str(fun_asr_tiny),
        "-o",
        str(out),
        "--resume",
        "-b",
        "16",
        "--max-tokens",
        str(MAX_TOKENS),
        *ENGINE_FLAGS,
    )
    assert again.returncode == 0, again.stderr
    assert f"{done_before} of 48 keys already done" in again.stderr
    keys = [r["key"] for r in _rows(results)]
    assert sorted(keys) == [f"utt{i:02d}" for i in range(48)]  # each key exactly once
    text_keys = [line.split(" ", 1)[0] for line in (out / "text").read_text().splitlines()]
    assert sorted(text_keys) == sorted(keys)

    refused = asrctl("transcribe", str(many), "--model", str(fun_asr_tiny), "-o", str(out))
    assert refused.returncode != 0 and "--resume" in refused.stderr
    nothing = asrctl(
        "transcribe", str(many), "--model", str(fun_asr_tiny), "-o", str(out), "--resume"
    )
    assert nothing.returncode == 0 and "nothing to do" in nothing.stderr


def test_without_output_dir_prints_kaldi_text_to_stdout(fun_asr_tiny, data_dir):
    wav = data_dir / "a.wav"
    run = asrctl(
        "transcribe",
        str(wav),
        "--model",
        str(fun_asr_tiny),
        "--max-tokens",
        str(MAX_TOKENS),
        *ENGINE_FLAGS,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1 and lines[0].split(" ", 1)[0] == "a"
    assert lines[0] == f"a {_reference_texts(fun_asr_tiny, {'a': wav})['a']}".rstrip()


def test_unknown_encoder_dtype_fails_before_the_model_loads(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    got = asrctl("transcribe", str(wav), "--model", str(tmp_path), "--encoder-dtype", "half")
    assert got.returncode == 2, got.stderr
    assert "--encoder-dtype 'half': use float32 or bfloat16" in got.stderr
