"""``asrctl transcribe`` as a user runs it: files on disk, stdout, stderr, exit codes.

Behaviour (outputs, formats, failures, exit codes) runs on asrctl.testing's fake engine
through the CLI's entry point in this process (``asrctl_cli``), under a second a run; a run
killed mid-way and resumed runs as subprocesses. One ``python -m asrctl`` run on real vLLM
checks the transcripts against transformers token for token (about 40 s of engine start
on CI's CPU).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from clirun import ENGINE_FLAGS, run_asrctl
from test_long_audio import parse_srt, parse_vtt

from asrctl import testing

MAX_TOKENS = 12
GOOD = ("a_wav16k", "b_flac", "c_wav8k", "d_stereo44k")
BAD = ("x_missing", "y_corrupt", "z_nan")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _kaldi(path: Path) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in path.read_text().splitlines())


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


def _check_mixed_run(run: subprocess.CompletedProcess, out: Path, good: tuple[str, ...]) -> dict:
    """What a run over good and broken inputs must leave; returns the texts by key."""
    assert run.returncode == 1, run.stderr
    assert run.stdout == ""  # data went to files; nothing else on stdout
    for key in BAD:
        assert key in run.stderr
    assert "Traceback" not in run.stderr
    assert f"{len(good)} transcribed, 3 failed" in run.stderr and "RTFx" in run.stderr
    rows = _rows(out / "results.jsonl")
    assert sorted(r["key"] for r in rows) == sorted(good)
    assert {r["key"] for r in _rows(out / "failed.jsonl")} == set(BAD)
    text = _kaldi(out / "text")
    assert text == {r["key"]: r["text"] for r in rows}
    return text


READY = r"model ready: before loading ([\d.]+) s .*vLLM ([\d.]+) s.*; ([\d.]+) s since the process"


@pytest.mark.vllm
def test_transcripts_equal_transformers_on_vllm(fun_asr_tiny, data_dir, tmp_path, reference_texts):
    out = tmp_path / "out"
    run = run_asrctl(
        *("transcribe", str(data_dir / "wav.scp"), "--model", str(fun_asr_tiny), "-o", str(out)),
        *("--max-tokens", str(MAX_TOKENS), "-b", "3", *ENGINE_FLAGS),
        timeout=600,
    )
    text = _check_mixed_run(run, out, GOOD)
    durations = {r["key"]: r["duration"] for r in _rows(out / "results.jsonl")}
    assert durations == {"a_wav16k": 1.2, "b_flac": 2.1, "c_wav8k": 0.8, "d_stereo44k": 1.7}
    ready = re.search(READY, run.stderr)  # where the start-up went, process start included
    assert ready, run.stderr
    before, vllm_s, age = (float(ready[i]) for i in (1, 2, 3))
    assert 0 < before < age and 0 < vllm_s < age
    wavs = {k: Path(v) for k, v in _kaldi(data_dir / "wav.scp").items() if k in text}
    expected = reference_texts(fun_asr_tiny, list(wavs.values()), MAX_TOKENS)
    assert text == dict(zip(wavs, expected, strict=True))


def test_mixed_inputs_write_results_and_name_the_bad_ones(
    asrctl_cli, fake_engine, fun_asr_tiny, data_dir, tmp_path
):
    scp = tmp_path / "wav.scp"
    a_copy = f"e_copy {data_dir / 'a.wav'}\n"  # the same audio under another key
    scp.write_text((data_dir / "wav.scp").read_text() + a_copy)
    out = tmp_path / "out"
    run = asrctl_cli(
        *("transcribe", str(scp), "--model", str(fun_asr_tiny), "-o", str(out)),
        *("--max-tokens", str(MAX_TOKENS), "-b", "3"),
    )
    text = _check_mixed_run(run, out, (*GOOD, "e_copy"))
    rows = {r["key"]: r for r in _rows(out / "results.jsonl")}
    assert {k: r["duration"] for k, r in rows.items()} == {
        "a_wav16k": 1.2, "b_flac": 2.1, "c_wav8k": 0.8, "d_stereo44k": 1.7, "e_copy": 1.2,
    }  # fmt: skip
    assert text["e_copy"] == text["a_wav16k"]  # same audio, same text
    assert len({text[k] for k in GOOD}) == len(GOOD)  # different audio, different text
    for key in GOOD:
        assert set(text[key].split()) <= set(testing.WORDS), text[key]
        assert rows[key]["finish_reason"] == "stop" and 0 < rows[key]["num_tokens"] <= MAX_TOKENS
    failures = {r["key"]: r["error"] for r in _rows(out / "failed.jsonl")}
    assert "missing.wav" in failures["x_missing"] and "NaN" in failures["z_nan"]


def test_stdout_modes_print_the_same_transcripts(
    asrctl_cli, fake_engine, fun_asr_tiny, data_dir, monkeypatch
):
    monkeypatch.setitem(sys.modules, "vllm", None)  # the fake path must not need vLLM
    wavs = [str(data_dir / "a.wav"), str(data_dir / "b.flac")]
    model = ("--model", str(fun_asr_tiny))
    plain = asrctl_cli("transcribe", *wavs, *model)
    assert plain.returncode == 0, plain.stderr
    text = _kaldi_lines(plain.stdout)
    assert sorted(text) == ["a", "b"] and all(text.values())  # in completion order
    jsonl = asrctl_cli("transcribe", *wavs, *model, "--format", "jsonl")
    assert jsonl.returncode == 0, jsonl.stderr
    assert {r["key"]: r["text"] for r in map(json.loads, jsonl.stdout.splitlines())} == text
    srt = asrctl_cli("transcribe", wavs[0], *model, "--format", "srt")
    assert srt.returncode == 0, srt.stderr
    assert parse_srt(srt.stdout + "\n") == [(0.0, 1.2, text["a"])]
    cut = asrctl_cli("transcribe", wavs[0], *model, "--max-tokens", "1")
    assert cut.returncode == 0 and text["a"].startswith(_kaldi_lines(cut.stdout)["a"])


def test_tokens_per_second_is_fixed_work(asrctl_cli, fake_engine, fun_asr_tiny, data_dir, tmp_path):
    """The benchmark option: ceil(N x seconds) tokens each, EOS ignored (hidden flag)."""
    out = tmp_path / "out"
    wavs = [str(data_dir / "a.wav"), str(data_dir / "b.flac")]
    run = asrctl_cli("transcribe", *wavs, "--model", str(fun_asr_tiny), "-o", str(out),
                     "--tokens-per-second", "10")  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = {r["key"]: r for r in _rows(out / "results.jsonl")}
    assert {k: (r["num_tokens"], r["finish_reason"]) for k, r in rows.items()} == {
        "a": (12, "length"), "b": (21, "length"),  # 1.2 s and 2.1 s
    }  # fmt: skip
    assert "--tokens-per-second" not in asrctl_cli("transcribe", "--help").stdout


def _kaldi_lines(stdout: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in stdout.splitlines())


def test_output_dir_formats(asrctl_cli, fake_engine, fun_asr_tiny, data_dir, tmp_path):
    out = tmp_path / "out"
    run = asrctl_cli(
        *("transcribe", str(data_dir / "a.wav"), str(data_dir / "c.wav")),
        *("--model", str(fun_asr_tiny), "-o", str(out), "--format", "jsonl,srt", "-f", "vtt"),
    )
    assert run.returncode == 0, run.stderr
    # .asrctl.lock: one run at a time per output folder (asrctl.results)
    assert sorted(p.name for p in out.iterdir()) == [
        ".asrctl.lock", "a.srt", "a.vtt", "c.srt", "c.vtt", "failed.jsonl", "results.jsonl",
        "text",
    ]  # fmt: skip
    rows = {r["key"]: r for r in _rows(out / "results.jsonl")}
    for key, seconds in (("a", 1.2), ("c", 0.8)):
        assert parse_srt((out / f"{key}.srt").read_text()) == [(0.0, seconds, rows[key]["text"])]
        assert parse_vtt((out / f"{key}.vtt").read_text()) == [(0.0, seconds, rows[key]["text"])]


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


def test_killed_run_resumes_without_losing_or_duplicating_keys(
    asrctl_cli, fake_engine, fun_asr_tiny, many, tmp_path
):
    out = tmp_path / "out"
    args = ("transcribe", str(many), "--model", str(fun_asr_tiny), "-o", str(out))
    slow = os.environ | {"ASRCTL_FAKE_ENGINE": "delay=0.05"}  # ~0.3 s an utterance
    # a subprocess, killed with its whole process group mid-way; the rest in this process
    proc = subprocess.Popen(
        [sys.executable, "-m", "asrctl", *args, "-b", "1", "--max-tokens", str(MAX_TOKENS)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=slow,
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = results.read_text().count("\n")
    assert 3 <= done_before < 48, "the run must be killed mid-way"

    again = asrctl_cli(*args, "--resume", "-b", "16", "--max-tokens", str(MAX_TOKENS))
    assert again.returncode == 0, again.stderr
    assert f"{done_before} of 48 keys already done" in again.stderr
    keys = [r["key"] for r in _rows(results)]
    assert sorted(keys) == [f"utt{i:02d}" for i in range(48)]  # each key exactly once
    text_keys = [line.split(" ", 1)[0] for line in (out / "text").read_text().splitlines()]
    assert sorted(text_keys) == sorted(keys)

    refused = asrctl_cli(*args)
    assert refused.returncode != 0 and "--resume" in refused.stderr
    nothing = asrctl_cli(*args, "--resume")
    assert nothing.returncode == 0 and "nothing to do" in nothing.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--encoder-dtype", "half"], 2, "--encoder-dtype 'half': use auto, float32, tf32"),
        (["--resume"], 2, "--resume needs --output-dir"),
        (["--format", "docx"], 2, "--format 'docx' is not one of"),
        (["--format", "srt", "{b}"], 2, "needs one input and one format"),
        (["--language", "xx"], 2, "does not support language 'xx'"),
        (["{missing}"], 4, "no such file or directory"),
        (["{a}"], 4, "duplicate key 'a'"),
        (["--model", "{nowhere}"], 3, "is not usable"),
    ],
)
def test_exit_codes(asrctl_cli, fake_engine, fun_asr_tiny, data_dir, args, code, message):
    paths = {"a": data_dir / "a.wav", "b": data_dir / "b.flac"}
    paths |= {"missing": data_dir / "missing.wav", "nowhere": data_dir / "nowhere"}
    args = [a.format(**paths) for a in args]
    run = asrctl_cli("transcribe", str(paths["a"]), "--model", str(fun_asr_tiny), *args)
    assert run.returncode == code, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""


def test_an_engine_that_fails_to_start_exits_5(asrctl_cli, fun_asr_tiny, data_dir, monkeypatch):
    monkeypatch.setenv("ASRCTL_FAKE_ENGINE", "fail=start")
    run = asrctl_cli("transcribe", data_dir / "a.wav", "--model", fun_asr_tiny)
    assert run.returncode == 5, run.stderr
    assert "engine: vLLM failed to start" in run.stderr and "ASRCTL_DEBUG" in run.stderr
    assert "Traceback" not in run.stderr


def test_an_engine_dying_mid_run_is_an_engine_error(
    asrctl_cli, fun_asr_tiny, data_dir, monkeypatch
):
    monkeypatch.setenv("ASRCTL_FAKE_ENGINE", "fail=step")
    run = asrctl_cli("transcribe", data_dir / "a.wav", "--model", fun_asr_tiny)
    assert run.returncode == 5, run.stderr
    assert "Traceback" not in run.stderr


def test_a_short_input_starts_vllm_without_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a GPU, under AUTO_EAGER_SECONDS of audio: eager, engine core in-process (vLLM
    starts sooner); an hour or more, an unknown duration, --cuda-graphs or no GPU: as asked."""
    import asrctl.engine
    from asrctl.cli.transcribe import AUTO_EAGER_SECONDS, short_input_engine
    from asrctl.engine import EngineOptions

    class Item:
        def __init__(self, seconds: float | None) -> None:
            self.seconds = seconds

        def duration(self) -> float | None:
            return self.seconds

    engine = EngineOptions(max_model_len=512)
    short = [Item(20.0)] * 3
    monkeypatch.setattr(asrctl.engine, "cuda_available", lambda: True)
    eager = short_input_engine(engine, short, cuda_graphs=False)
    assert eager.enforce_eager and eager.in_process and eager.max_model_len == 512
    assert short_input_engine(engine, short, cuda_graphs=True) is engine
    assert short_input_engine(engine, [Item(AUTO_EAGER_SECONDS / 2)] * 2, cuda_graphs=False) is (
        engine
    )
    assert short_input_engine(engine, [*short, Item(None)], cuda_graphs=False) is engine
    monkeypatch.setattr(asrctl.engine, "cuda_available", lambda: False)
    assert short_input_engine(engine, short, cuda_graphs=False) is engine


def test_the_ready_message_says_what_came_before_loading() -> None:
    from asrctl.cli.transcribe import ready_message
    from asrctl.pipeline import Startup

    startup = Startup(setup_s=0.5, engine_s=25.0, encoder_s=1.5)
    message = ready_message(startup, 45.0)
    assert message == (
        "model ready: before loading 18.0 s (Python, imports, inputs), setup 0.5 s, "
        "vLLM 25.0 s, encoder 1.5 s; 45.0 s since the process started"
    )
    assert re.search(READY, message)
    assert ready_message(startup, None) == "model ready: setup 0.5 s, vLLM 25.0 s, encoder 1.5 s"


def test_cuda_graphs_and_enforce_eager_contradict(asrctl_cli, tmp_path: Path) -> None:
    done = asrctl_cli("transcribe", str(tmp_path), "-m", str(tmp_path), "--cuda-graphs",
                      "--enforce-eager")  # fmt: skip
    assert done.returncode != 0 and "contradict" in done.stderr
