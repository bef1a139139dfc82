"""The content-keyed embedding cache and the caching encoder wrapper (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asrctl.embedding_cache import CachedEncoder, EmbeddingCache, audio_key

SR = 16000


def wave(seed: int, n: int = 1600) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def test_key_follows_content_and_rate():
    a = wave(0)
    assert audio_key(a, SR) == audio_key(a.copy(), SR)
    assert audio_key(a, SR) == audio_key(torch.from_numpy(a), SR)
    assert audio_key(a.astype(np.float64), SR) == audio_key(a, SR)  # hashed as float32
    assert audio_key(a, SR) != audio_key(a, 24000)
    b = a.copy()
    b[100] += 1e-3
    assert audio_key(a, SR) != audio_key(b, SR)


def test_lru_bounded_by_bytes():
    row = torch.zeros(100, dtype=torch.float32)  # 400 bytes
    cache = EmbeddingCache(max_bytes=1000)
    cache.put(b"a", row)
    cache.put(b"b", row.clone())
    assert cache.get(b"a") is row  # a is now the most recent
    cache.put(b"c", row.clone())  # 1200 bytes: b (least recent) goes
    assert cache.get(b"b") is None and cache.get(b"a") is row and cache.get(b"c") is not None
    assert len(cache) == 2 and cache.nbytes == 800
    cache.put(b"huge", torch.zeros(1000))  # larger than the bound on its own: not kept
    assert cache.get(b"huge") is None and len(cache) == 2
    cache.put(b"a", torch.zeros(10))  # replacing an entry frees its old size
    assert cache.nbytes == 440
    assert (cache.hits, cache.misses) == (3, 2)
    with pytest.raises(ValueError):
        EmbeddingCache(-1)


class CountingEncoder:
    """Embeds a wave as its first 4 samples repeated; records each call's batch size."""

    word_timing = True

    def __init__(self) -> None:
        self.batches: list[int] = []

    def encode(self, waves, *, timing=False):
        self.batches.append(len(waves))
        embeds = [w[:4].repeat(2, 1) for w in waves]
        frames = [f"frames{len(w)}" for w in waves] if timing else None
        return embeds, frames

    def word_times(self, texts, timing):
        return [[{"word": t}] for t in texts]


def test_cached_encoder_encodes_each_audio_once_in_input_order():
    inner = CountingEncoder()
    enc = CachedEncoder(inner, SR, EmbeddingCache())
    a, b, c = (torch.from_numpy(wave(i, 1600 + i)) for i in range(3))
    first, none = enc.encode([a, b])
    assert none is None and inner.batches == [2]
    again, _ = enc.encode([b, c, a])  # only c is new
    assert inner.batches == [2, 1] and enc.calls == 2
    assert torch.equal(again[0], first[1]) and torch.equal(again[2], first[0])
    assert torch.equal(again[1], c[:4].repeat(2, 1))
    # an entry made without timing data does not serve a timed request; then it does
    _, frames = enc.encode([a, c], timing=True)
    assert inner.batches == [2, 1, 2] and frames == ["frames1600", "frames1602"]
    _, frames = enc.encode([c], timing=True)
    assert inner.batches == [2, 1, 2] and frames == ["frames1602"]
    # the wrapped encoder's other members pass through
    assert enc.word_timing and enc.word_times(["x"], [None]) == [[{"word": "x"}]]
    assert len(enc([a])) == 1 and inner.batches == [2, 1, 2]
    d = torch.from_numpy(wave(9))
    out, _ = enc.encode([d, a, d.clone()])  # a batch's repeats are encoded once
    assert inner.batches == [2, 1, 2, 1] and torch.equal(out[0], out[2])
