"""Synthetic conversations: espeak-ng voices taking turns, with known turn boundaries.

Generated at test time (never committed). Each voice is an espeak-ng voice + variant at its
own pitch and speed, so the speakers differ the way real ones do (timbre, pitch, accent).
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000
# (espeak-ng voice+variant, pitch 0-99, words per minute)
VOICES = (
    ("en-us+m3", 30, 160),
    ("en-gb+f4", 70, 170),
    ("en-gb-scotland+m7", 45, 145),
    ("en-us+f2", 90, 185),
)
LINES = (
    "Good morning everyone, thanks for joining the weekly planning meeting today.",
    "Thanks. I finished the report on the new storage servers last night.",
    "Great. Did the numbers match what we expected from the test cluster?",
    "Mostly, although the write latency was higher than the vendor promised.",
    "We should ask them about that before we sign the contract next month.",
    "I agree. I can call their support team this afternoon and find out more.",
    "Please also check whether the warranty covers the replacement drives.",
    "Sure, I will send a summary to the whole team by the end of the day.",
    "One more thing, the office will be closed on Friday for maintenance work.",
    "Then let us move the review to Thursday morning at ten o'clock instead.",
    "That works for me. I will update the calendar invitation right away.",
    "Perfect. If there is nothing else, we can finish a little early today.",
)


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def speak(text: str, voice: int) -> np.ndarray:
    """One utterance by voice ``voice`` as 16 kHz float32, silence trimmed at both ends."""
    import soxr

    name, pitch, speed = VOICES[voice]
    wav = subprocess.run(
        ["espeak-ng", "-v", name, "-p", str(pitch), "-s", str(speed), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout
    audio, rate = sf.read(io.BytesIO(wav), dtype="float32")
    audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0] : loud[-1] + 1] if len(loud) else audio


@dataclass(frozen=True)
class Turn:
    start: float
    end: float
    speaker: int


def conversation(
    speakers: list[int], gaps: list[float] | float = 0.6, seed: int = 0
) -> tuple[np.ndarray, list[Turn]]:
    """``speakers[i]`` says line i (cycling through :data:`LINES`), with ``gaps`` seconds
    of low noise between turns (one value, or one per gap). Returns the audio (16 kHz) and
    the true turns."""
    rng = np.random.default_rng(seed)
    gap_list = gaps if isinstance(gaps, list) else [gaps] * len(speakers)
    pieces: list[np.ndarray] = [np.zeros(int(0.5 * RATE), np.float32)]
    turns: list[Turn] = []
    t = 0.5
    for i, who in enumerate(speakers):
        audio = speak(LINES[i % len(LINES)], who)
        turns.append(Turn(round(t, 3), round(t + len(audio) / RATE, 3), who))
        t += len(audio) / RATE
        gap = gap_list[i] if i + 1 < len(speakers) else 0.5
        pieces += [audio, np.zeros(int(gap * RATE), np.float32)]
        t += int(gap * RATE) / RATE
    audio = np.concatenate(pieces)
    audio += (0.002 * rng.standard_normal(len(audio))).astype(np.float32)
    return audio.astype(np.float32), turns


def write(path: Path, audio: np.ndarray) -> Path:
    sf.write(path, audio, RATE, subtype="PCM_16")
    return path


def der(reference: list[Turn], hypothesis: list[tuple[float, float, str]]) -> float:
    """Diarization error rate (pyannote.metrics, 0.5 s collar: ±0.25 s around boundaries)."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref = Annotation()
    for t in reference:
        ref[Segment(t.start, t.end)] = f"s{t.speaker}"
    hyp = Annotation()
    for start, end, label in hypothesis:
        hyp[Segment(start, end)] = label
    uem = Segment(0.0, max(t.end for t in reference) + 1.0)
    from pyannote.core import Timeline

    return float(DiarizationErrorRate(collar=0.5)(ref, hyp, uem=Timeline([uem])))
