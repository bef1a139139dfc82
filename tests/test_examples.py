"""Every script in examples/ and the README's Library block runs, so none can rot.

The scripts run in this process (``runpy``, as ``__main__``, with their command lines) on
the tiny fixture; ``asrctl.load`` hands them the session's one loaded model (``asr_tiny``,
real vLLM) instead of starting an engine per script. ``openai_client.py`` talks to a real
``asrctl`` server app (uvicorn, in a thread) over a fake model: no engine. The README's
block runs as a user runs it, ``python demo.py`` in a subprocess (its own engine).
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import asrctl

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SR = 16000


class Shared:
    """The session's model, which the scripts may 'close' without closing it."""

    def __init__(self, asr: asrctl.ASR) -> None:
        self._asr = asr
        self.loaded: list[str] = []

    def __getattr__(self, name: str):
        return getattr(self._asr, name)

    def __enter__(self) -> Shared:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def shared(asr_tiny, monkeypatch) -> Shared:
    model = Shared(asr_tiny)

    def load(model_dir, **options):
        model.loaded.append(str(model_dir))
        return model

    monkeypatch.setattr(asrctl, "load", load)
    return model


def run(script: Path, *args: object, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(script), *map(str, args)])
    runpy.run_path(str(script), run_name="__main__")


def speech(seed: int, seconds: float = 1.0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * SR))).astype(
        np.float32
    )


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(("a.wav", "b.flac", "sub/c.wav")):
        sf.write(root / name, speech(i, 0.6 + 0.2 * i), SR)
    return root


def test_every_example_is_tested():
    names = {p.name for p in EXAMPLES.glob("*.py")}
    tested = set(re.findall(r'EXAMPLES / "(\w+\.py)"', Path(__file__).read_text()))
    assert names == tested


def test_folder_to_srt(shared, folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "subs"
    run(EXAMPLES / "folder_to_srt.py", "MODEL", folder, out, monkeypatch=monkeypatch)
    assert shared.loaded == ["MODEL"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["a.srt", "b.srt", "sub__c.srt"]
    cue = (out / "b.srt").read_text()
    assert cue.startswith("1\n00:00:00,000 --> 00:00:00,800\n") and len(cue.splitlines()) == 3
    assert str(out / "a.srt") in capsys.readouterr().out


def test_numpy_arrays(shared, folder, monkeypatch, capsys):
    paths = [folder / "a.wav", folder / "b.flac"]
    run(EXAMPLES / "numpy_arrays.py", "MODEL", *paths, monkeypatch=monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{paths[0]}: ") and lines[0].endswith("(0.60 s)")
    singles = [line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in lines[:2]]
    assert lines[2] == str([eval(s) for s in singles])  # the batch: same texts, same order


def test_async_concurrency(shared, folder, monkeypatch, capsys):
    run(
        EXAMPLES / "async_concurrency.py",
        "MODEL",
        folder,
        "--concurrency",
        2,
        monkeypatch=monkeypatch,
    )
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out[:3]] == ["a", "b", "sub__c"]
    assert out[3].startswith("3 files, 2.4 s of audio in ")


def test_stream_file(shared, tmp_path, monkeypatch, capsys):
    path = tmp_path / "talk.wav"
    audio = np.concatenate([speech(5, 1.0), np.zeros(SR, np.float32), speech(6, 0.8)])
    sf.write(path, audio, SR)
    run(EXAMPLES / "stream_file.py", "MODEL", path, monkeypatch=monkeypatch)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("final   2.80s  [0.00-") and lines[-1].count("[") == 2
    assert any(line.startswith("partial") for line in lines[:-1])


def test_bench_folder(shared, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for i in range(3):
        sf.write(data / f"u{i}.wav", speech(10 + i, 0.5), SR)
        lines.append(f"u{i} {data / f'u{i}.wav'}")
    (data / "wav.scp").write_text("\n".join(lines) + "\n")
    (data / "text").write_text("u0 你好\nu1 世界\nu2 再见\n")
    run(EXAMPLES / "bench_folder.py", "MODEL", data, "--language", "zh", monkeypatch=monkeypatch)
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"CER \d+\.\d\d % over 6 tokens", out[0])
    assert out[1].startswith("3 utterances, 1.5 s of audio, RTF ")


def test_openai_client(fake_server, folder, monkeypatch, capsys):
    path = folder / "a.wav"
    args = (fake_server, path, "--model", "tiny", "--api-key", "sk-x")
    run(EXAMPLES / "openai_client.py", *args, monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    assert f"{path}: heard 9600 samples\n" in out
    assert f"heard 9600 samples\n{path} (streamed): heard 9600 samples\n" in out


def readme_library_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.vllm
def test_readme_library_block_runs_as_a_script(fun_asr_tiny, folder, tmp_path):
    """As a user runs it: saved as demo.py, ``python demo.py`` (its own engine, the guard
    doing its job in vLLM's spawned engine process)."""
    code = readme_library_block()
    assert 'if __name__ == "__main__":' in code
    audio = [str(folder / "a.wav"), str(folder / "b.flac")]
    code, n = re.subn(r'(?m)^MODEL = "[^"]*"$', f"MODEL = {str(fun_asr_tiny)!r}", code)
    code, m = re.subn(r"(?m)^AUDIO = .*$", f"AUDIO = {audio!r}", code)
    assert n == m == 1
    script = tmp_path / "demo.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's asrctl
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.splitlines()  # vLLM logs to stdout too: find the script's lines
    first = next(i for i, line in enumerate(out) if line.startswith("a 0.6s "))
    assert out[first + 1].startswith("b 0.8s ")
    assert [line for line in out if line.startswith(("True ", "False "))][-1].startswith("True ")


def test_vllm_plugin_command_line():
    """``vllm_plugin.py`` is seed 000's code on an ``asrctl setup`` folder: it starts its own
    engine, so tests/test_vllm_plugin_engine.py runs it on every family (tokens equal asrctl's
    pipeline); here, only its command line."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "vllm_plugin.py"), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--async" in proc.stdout and "vllm_dir" in proc.stdout
