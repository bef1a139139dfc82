"""The same audio submitted twice is encoded once: a bounded, content-keyed embedding cache.

:class:`EmbeddingCache` maps a waveform's content (a BLAKE2b hash of its float32 samples and
its sample rate) to whatever the audio encoder returned for it, and forgets the least recently
used entries once their total size passes ``max_bytes``. :class:`CachedEncoder` puts it in
front of an :class:`~asrctl.adapters.base.AudioEncoder`: a batch is split into hits and
misses, only the misses are encoded (in one call), and the results come back in input order.
A wrapped encoder is a drop-in replacement wherever ``encoder.encode(waves, timing=...)`` is
called (the batch pipeline, the server's encoder worker).

Entries keep the encoder's output where it was made (on the GPU for a GPU encoder); the
bound counts those bytes. Thread-safe: the server encodes in a worker thread while the event
loop may look entries up.
"""

from __future__ import annotations

import hashlib
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from asrctl.models.encoder import AudioEncoder

if TYPE_CHECKING:
    import torch

    from asrctl.results import Word

DEFAULT_MAX_BYTES = 256 << 20  # 256 MiB: about 30 minutes of Fun-ASR-Nano embeddings (fp32)


def audio_key(samples: np.ndarray | torch.Tensor, sample_rate: int) -> bytes:
    """A content key for a waveform: BLAKE2b over its float32 samples and its rate."""
    if not isinstance(samples, np.ndarray):  # a torch tensor: no copy on the CPU
        samples = samples.detach().cpu().numpy()
    data = np.ascontiguousarray(samples, dtype=np.float32)
    digest = hashlib.blake2b(data.tobytes(), digest_size=16)
    digest.update(int(sample_rate).to_bytes(8, "little"))
    return digest.digest()


def size_of(value: Any) -> int:
    """Bytes a cached value holds: tensors and arrays by their buffers, containers summed."""
    if hasattr(value, "element_size") and hasattr(value, "nelement"):  # torch.Tensor
        return int(value.element_size() * value.nelement())
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, list | tuple):
        return sum(size_of(v) for v in value) + sys.getsizeof(value)
    if isinstance(value, dict):
        return sum(size_of(v) for v in value.values()) + sys.getsizeof(value)
    return sys.getsizeof(value)


class EmbeddingCache:
    """Least-recently-used map from :func:`audio_key` to an encoder output, bounded in bytes.

    A value larger than ``max_bytes`` on its own is not kept. ``hits`` and ``misses`` count
    lookups, for tests and metrics.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held now (never more than ``max_bytes``)."""
        return self._bytes

    def get(self, key: bytes) -> Any | None:
        """The value stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: bytes, value: Any) -> None:
        """Store ``value``, dropping the least recently used entries beyond the bound."""
        size = size_of(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


class CachedEncoder(AudioEncoder):
    """An audio encoder with an :class:`EmbeddingCache` in front (see the module docstring).

    Everything but :meth:`encode` and ``__call__`` is the wrapped encoder's own
    (``word_timing``, ``word_times``, any other attribute). An entry made without
    word-timing data does not serve a request that asks for it (it is encoded again and
    replaced).
    """

    def __init__(
        self, encoder: AudioEncoder, sample_rate: int, cache: EmbeddingCache | None = None
    ) -> None:
        self.encoder = encoder
        self.sample_rate = sample_rate
        self.cache = cache if cache is not None else EmbeddingCache()
        self.calls = 0  # encoder calls made (misses only); for tests

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    @property
    def word_timing(self) -> bool:
        return self.encoder.word_timing

    def word_times(self, texts: Sequence[str], timing: Sequence[object]) -> list[list[Word]]:
        return self.encoder.word_times(texts, timing)

    def __call__(self, waves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.encode(waves)[0]

    def encode(
        self, waves: Sequence[torch.Tensor], *, timing: bool = False
    ) -> tuple[list[torch.Tensor], list[object] | None]:
        """``encoder.encode(waves, timing=timing)``, encoding only what the cache lacks."""
        timing = timing and self.encoder.word_timing
        keys = [audio_key(w, self.sample_rate) for w in waves]
        found: list[tuple[Any, object] | None] = []
        for key in keys:
            hit = self.cache.get(key)
            found.append(hit if hit is not None and (not timing or hit[1] is not None) else None)
        missing: dict[bytes, int] = {}  # key -> first index: a batch's repeats encoded once
        for i, hit in enumerate(found):
            if hit is None:
                missing.setdefault(keys[i], i)
        if missing:
            self.calls += 1
            firsts = list(missing.values())
            embeds, frames = self.encoder.encode([waves[i] for i in firsts], timing=timing)
            made = {
                keys[i]: (embeds[k], frames[k] if frames is not None else None)
                for k, i in enumerate(firsts)
            }
            for key, value in made.items():
                self.cache.put(key, value)
            found = [
                made[key] if hit is None else hit for key, hit in zip(keys, found, strict=True)
            ]
        out = [hit[0] for hit in found if hit is not None]
        if not timing:
            return out, None
        return out, [hit[1] for hit in found if hit is not None]
