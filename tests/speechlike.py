"""Speech-like test audio without a speech synthesiser: words of 1-4 syllables (a glottal
pulse train at a falling, jittered pitch through three formant resonators gliding between
two vowels, sometimes a fricative onset) separated by 40-120 ms gaps.

Silero VAD scores it as speech (> 0.9 of its windows), while it scores pure tones and
white noise as non-speech: long recordings with a known truth need no espeak-ng.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

SR = 16000
VOWELS = (
    (730, 1090, 2440),
    (270, 2290, 3010),
    (300, 870, 2240),
    (530, 1840, 2480),
    (570, 840, 2410),
    (440, 1020, 2240),
)


def noise(seconds: float, seed: int = 0, sr: int = SR, level: float = 0.1) -> np.ndarray:
    """Seeded white noise, float32: ``level`` times N(0, 1), ``round(seconds * sr)`` samples."""
    rng = np.random.default_rng(seed)
    return (level * rng.standard_normal(round(seconds * sr))).astype(np.float32)


def reson(x, f, bw, sr=SR):
    r = np.exp(-np.pi * bw / sr)
    return lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / sr), r * r], x)


def speechlike(seconds, seed=0, sr=SR):
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    out = np.zeros(n)
    pos = 0
    base = 100 + 40 * rng.random()
    while pos < n:
        # a word: 1-4 syllables, then a 40-120 ms gap
        nsyl = rng.integers(1, 5)
        f0start = base * (1.1 + 0.2 * rng.random())
        for k in range(nsyl):
            L = round(rng.uniform(0.12, 0.3) * sr)
            if pos + L > n:
                L = n - pos
            if L <= 0:
                break
            t = np.arange(L) / sr
            f0 = (
                f0start
                * (1 - 0.15 * k / nsyl)
                * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
                * (1 + 0.01 * rng.standard_normal(L).cumsum() / np.sqrt(L))
            )
            ph = np.cumsum(2 * np.pi * f0 / sr)
            p = np.zeros(L)
            p[1:][np.diff(np.floor(ph / (2 * np.pi))) > 0] = 1
            src = p + 0.02 * rng.standard_normal(L)
            F1 = VOWELS[rng.integers(len(VOWELS))]
            F2 = VOWELS[rng.integers(len(VOWELS))]
            y = np.zeros(L)
            half = L // 2
            for (fa, fb), bw in zip(zip(F1, F2, strict=True), (80, 100, 120), strict=True):
                y[:half] += reson(src[:half], fa, bw)
                y[half:] += reson(src[half:], fb, bw)
            env = np.sin(np.pi * np.arange(L) / L) ** 0.7 * rng.uniform(0.4, 1.0)
            y = y * env
            if rng.random() < 0.5:  # fricative onset
                m = min(L, round(0.05 * sr))
                fr = lfilter([1, -0.95], [1], rng.standard_normal(m)) * 0.02
                y[:m] += fr
            out[pos : pos + L] = y / (np.abs(y).max() + 1e-9) * 0.5 * env.max()
            pos += L
        pos += round(rng.uniform(0.04, 0.12) * sr)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def recording(
    layout: list[tuple[str, float]], seed: int = 0, sr: int = SR
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """``[("speech", 3.0), ("silence", 2.5), ("noise", 1.0), ("tone", 1.0), ...]`` → audio and
    the true speech spans (seconds)."""
    parts, truth, t = [], [], 0.0
    rng = np.random.default_rng(seed + 1000)
    for i, (kind, seconds) in enumerate(layout):
        n = round(seconds * sr)
        if kind == "speech":
            parts.append(speechlike(seconds, seed + i, sr))
            truth.append((t, t + n / sr))
        elif kind == "silence":
            parts.append(np.zeros(n, np.float32))
        elif kind == "noise":
            parts.append((0.05 * rng.standard_normal(n)).astype(np.float32))
        elif kind == "tone":
            parts.append((0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)).astype(np.float32))
        else:
            raise ValueError(kind)
        t += n / sr
    return np.concatenate(parts), truth
