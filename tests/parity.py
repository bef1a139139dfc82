"""The steps every whole-pipeline parity test shares: test audio, asrctl as a user runs it,
and the comparison of its text with the original pipeline's.

Each ``test_*_original.py`` builds its family's checkpoint with the original code and
computes the original's greedy output; these helpers do the rest the same way for all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from clirun import run_asrctl


def chirp_wavs(
    folder: Path,
    durations: Sequence[float],
    sample_rate: int,
    *,
    seed: int,
    base_hz: float,
    step_hz: float,
    sweep: float,
) -> list[Path]:
    """16-bit wav files ``utt{i}.wav``: a rising chirp plus a little seeded noise, each
    utterance at its own pitch, so that random-weight models give each its own text."""
    paths = []
    for i, seconds in enumerate(durations):
        rng = np.random.default_rng(seed + i)
        t = np.arange(round(sample_rate * seconds)) / sample_rate
        x = 0.3 * np.sin(2 * np.pi * (base_hz + step_hz * i) * t * (1 + sweep * t))
        x += 0.05 * rng.standard_normal(t.size)
        path = folder / f"utt{i}.wav"
        sf.write(path, np.clip(x, -1, 1).astype(np.float32), sample_rate, subtype="PCM_16")
        paths.append(path)
    return paths


def asrctl_texts(
    model_dir: Path, wavs: Sequence[Path], out: Path, *flags: str, setup: bool = False
) -> list[str]:
    """``asrctl [setup and] transcribe`` with default decoding (raw text, CPU, no graphs)
    plus ``flags``; the text of each wav, in order."""
    if setup:
        proc = run_asrctl("setup", str(model_dir), timeout=300)
        assert proc.returncode == 0, proc.stderr
    proc = run_asrctl(
        "transcribe",
        "-m",
        str(model_dir),
        *map(str, wavs),
        "-o",
        str(out),
        "--raw-text",
        "--device",
        "cpu",
        "--enforce-eager",
        *flags,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(wavs)
    texts = []
    for wav in wavs:
        [row] = [r for r in rows if r["key"] == wav.stem or r["key"].endswith(wav.name)]
        texts.append(row["text"])
    return texts


def assert_same_text(name: str, ours: str, expected: str) -> None:
    """``ours`` is the original's text, except an undecodable byte-token tail that vLLM's
    incremental detokenizer holds back (the original shows it as U+FFFD)."""
    held_back = expected[len(ours) :]
    assert expected.startswith(ours), (name, ours, expected)
    assert not held_back or "\ufffd" in held_back, (name, held_back)


def assert_audio_dependent(texts: Sequence[str]) -> None:
    """Every text non-empty and different: the outputs depend on the audio."""
    assert len(set(texts)) == len(texts) and all(texts), texts
