"""The public API: ``asrctl.load`` and the ASR object (on the fake engine, one for the
session: ``asr_tiny`` in conftest), the ``__main__`` guard and input
resolution (no engine)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import asrctl
from asrctl.api import to_items
from asrctl.errors import InputError, MainGuardError, TranscriptionError
from asrctl.mainguard import check
from asrctl.server.options import RealtimeOptions

SR = 16000
REPO = Path(__file__).resolve().parents[1]


def noise(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * sr))).astype(
        np.float32
    )


@pytest.fixture
def count_encoded(asr_tiny, monkeypatch):
    """Waveforms the real encoder (behind the embedding cache) encodes, counted."""
    inner = asr_tiny.model.encoder.encoder
    encoded: list[int] = []
    real = inner.encode

    def encode(waves, **kw):
        encoded.extend(len(w) for w in waves)
        return real(waves, **kw)

    monkeypatch.setattr(inner, "encode", encode)
    asr_tiny.model.encoder.cache.clear()
    return encoded


def test_paths_folder_bytes_arrays_in_input_order(asr_tiny, tmp_path, count_encoded):
    folder = tmp_path / "folder"
    folder.mkdir()
    for name, seconds, seed in (("b", 0.8, 1), ("a", 1.2, 2)):
        sf.write(folder / f"{name}.wav", noise(seconds, seed), SR, subtype="PCM_16")
    one = tmp_path / "one.flac"
    sf.write(one, noise(0.6, 3), SR)
    same, _ = sf.read(folder / "a.wav", dtype="float32")  # a.wav's samples, as an array
    at_8k = noise(1.0, 4, sr=8000)

    results = asr_tiny.transcribe(
        [one, folder, (folder / "b.wav").read_bytes(), (at_8k, 8000), same], sample_rate=SR
    )
    assert [r.key for r in results] == ["one", "a", "b", "0002", "0003", "0004"]
    assert [r.duration for r in results] == [0.6, 1.2, 0.8, 0.8, 1.0, 1.2]
    assert all(isinstance(r, asrctl.Transcript) and r.text for r in results)
    # the same audio through a file, bytes or an array: the same text, encoded once
    assert results[2].text == results[3].text and results[1].text == results[5].text
    assert sorted(count_encoded) == sorted(round(s * SR) for s in (0.6, 1.2, 0.8, 1.0))

    again = asr_tiny.transcribe(same, sample_rate=SR)  # a second call: still not re-encoded
    assert again[0].text == results[1].text and len(count_encoded) == 4


def test_failures_raise_naming_the_input_or_come_back(asr_tiny, tmp_path):
    good = noise(0.5, 5)
    with pytest.raises(
        TranscriptionError, match=r"1 of 2 inputs could not be transcribed:\n  - 0001: "
    ) as caught:
        asr_tiny.transcribe([good, b"not audio at all"], sample_rate=SR)
    assert [f.key for f in caught.value.failures] == ["0001"]
    assert isinstance(caught.value.results[0], asrctl.Transcript)
    results = asr_tiny.transcribe([good, b"not audio at all"], sample_rate=SR, errors="return")
    assert isinstance(results[0], asrctl.Transcript) and isinstance(results[1], asrctl.Failure)
    with pytest.raises(InputError, match="no such file"):
        asr_tiny.transcribe(tmp_path / "missing.wav")
    with pytest.raises(asrctl.AsrctlError, match="xx"):
        asr_tiny.transcribe(good, sample_rate=SR, language="xx")


def test_long_input_goes_through_long_audio(asr_tiny, tmp_path):
    """Over Fun-ASR-Nano's 30 s per pass: split at pauses and stitched, as the CLI does."""
    sys.path.insert(0, str(Path(__file__).parent))
    from speechlike import recording

    audio, _ = recording([("speech", 14.0), ("silence", 2.0), ("speech", 16.0)], seed=3)
    path = tmp_path / "long.wav"
    sf.write(path, audio, SR)
    short = noise(0.5, 30)
    long, brief = asr_tiny.transcribe([path, short], sample_rate=SR)
    assert long.key == "long" and long.duration == 32.0 and len(long.segments) >= 2
    assert long.segments[0].start < 0.5 and long.segments[-1].end > 31.0
    assert long.notes and brief.segments is None and brief.key == "0001"
    (whole,) = asr_tiny.transcribe(audio, sample_rate=SR, vad=False, errors="return")
    assert isinstance(whole, asrctl.Failure) and "at most 30 s per pass" in whole.error


def test_transcribe_async_inside_an_event_loop(asr_tiny, monkeypatch):
    """Sync and async calls share the one engine ``load`` started: none starts another."""
    import asrctl.engine

    def second_engine(*args, **kwargs):
        raise AssertionError("a second engine was started")

    monkeypatch.setattr(asrctl.engine, "start_vllm", second_engine)
    engine = asr_tiny.model.engine
    clips = [noise(0.5 + 0.1 * i, 10 + i) for i in range(6)]
    expected = [r.text for r in asr_tiny.transcribe(clips, sample_rate=SR)]

    async def main() -> list[str]:
        tick = 0

        async def ticker() -> None:  # the caller's loop stays free while the engine works
            nonlocal tick
            while True:
                tick += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(
            *(asr_tiny.transcribe_async(c, sample_rate=SR) for c in clips)
        )
        task.cancel()
        assert tick > 1
        return [r[0].text for r in results]

    assert asyncio.run(main()) == expected
    assert asr_tiny.model.engine is engine


def test_stream_yields_partials_then_the_final_transcript(asr_tiny):
    speech = np.concatenate([noise(1.5, 20), np.zeros(SR, dtype=np.float32), noise(1.0, 21)])

    def paced():  # a microphone: 100 ms chunks in real time
        for i in range(0, len(speech), SR // 10):
            time.sleep(0.1)
            yield speech[i : i + SR // 10]

    async def paced_async():  # the same, from asyncio code (a WebSocket, a queue)
        for i in range(0, len(speech), SR // 10):
            await asyncio.sleep(0.1)
            yield speech[i : i + SR // 10]

    async def collect() -> list:
        stream = asr_tiny.stream_async(paced_async(), sample_rate=SR, options=options)
        return [u async for u in stream]

    options = RealtimeOptions(partial_max_tokens=4)
    for updates in (
        list(asr_tiny.stream(paced(), sample_rate=SR, options=options)),
        asyncio.run(collect()),
    ):
        assert any(u.partial and not u.is_final for u in updates[:-1])
        final = updates[-1]
        assert final.is_final and final.duration == 3.5 and len(final.sentences) == 2
        first, second = final.sentences
        assert first.start < 0.1 and 1.5 < first.end < 2.0 and 2.2 < second.start < 2.6
        assert final.text and final.partial == ""


def run_script(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's asrctl
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_missing_main_guard_is_a_clear_error(tmp_path):
    """Caught in the parent before any engine or child process starts."""
    model = tmp_path / "no-model"
    unguarded = run_script(tmp_path, f"import asrctl\nasr = asrctl.load({str(model)!r})\n")
    assert unguarded.returncode == 1
    assert "MainGuardError" in unguarded.stderr
    assert 'script.py (line 2) without an `if __name__ == "__main__":` guard' in unguarded.stderr

    in_function = run_script(
        tmp_path, f"import asrctl\n\ndef main():\n    asrctl.load({str(model)!r})\n\nmain()\n"
    )
    assert "MainGuardError" in in_function.stderr and "(line 6)" in in_function.stderr

    guarded = run_script(
        tmp_path,
        f"""
        import asrctl

        def main():
            asrctl.load({str(model)!r})

        if __name__ == "__main__":
            main()
        """,
    )
    assert guarded.returncode == 1 and "MainGuardError" not in guarded.stderr
    assert "no-model" in guarded.stderr  # got past the guard check to the model directory


def test_main_guard_in_a_child_reimporting_the_script(monkeypatch):
    import multiprocessing

    monkeypatch.setattr(multiprocessing.current_process(), "_inheriting", True, raising=False)
    with pytest.raises(MainGuardError, match="child process"):
        check()


def test_inputs_become_items_in_order(tmp_path):
    wav = tmp_path / "x.wav"
    sf.write(wav, noise(0.2, 0), SR)
    items = to_items([wav, b"RIFF", (noise(0.1, 1), 8000), noise(0.1, 2)], sample_rate=SR)
    assert [(i.key, i.kind, i.source_rate) for i in items] == [
        ("x", "path", None), ("0001", "bytes", None), ("0002", "array", 8000),
        ("0003", "array", SR),
    ]  # fmt: skip
    assert [i.key for i in to_items((noise(0.1, 1), 8000))] == ["0000"]
    assert [i.key for i in to_items(x for x in [wav, b"RIFF"])] == ["x", "0001"]
    with pytest.raises(InputError, match="sample rate"):
        to_items(noise(0.1, 0))
    with pytest.raises(InputError, match="got int"):
        to_items([3])
    with pytest.raises(InputError, match="share the key"):
        to_items([wav, wav])


def test_import_is_light_and_names_resolve():
    code = (
        "import sys, asrctl\n"
        "assert not {'torch', 'vllm', 'numpy'} & set(sys.modules), sys.modules.keys()\n"
        "missing = [n for n in asrctl.__all__ if getattr(asrctl, n, None) is None]\n"
        "assert not missing, missing\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
