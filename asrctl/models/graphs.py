"""Replaying an audio encoder as CUDA graphs, over a few padded shapes.

An encoder pass over little audio costs mostly its own overhead: one 5 s clip took 51 ms
in ``asrctl serve`` (BENCHMARKS.md, round 12), launching a 70-layer encoder's kernels one
by one from Python, and under load each server pass paid ~89 ms of such fixed cost. A CUDA
graph replays all of a pass's kernels with one call.

A graph has fixed shapes, so a pass is padded up to a *bucket*: its utterance count and
its frame count each rounded up to the next listed size (≤ 1.5× each). Padding is exact
for encoders whose frames past an utterance's length never reach its valid frames (masked
attention keys, memory blocks that zero padded values): the valid outputs are the same
numbers, except for what other matrix shapes change in floating-point rounding. Extra rows
get length 1, so no row is fully masked. A graph is captured the first time its bucket is
needed (a few eager passes), into one memory pool that all graphs share, and its input
buffers are views of one buffer as large as the largest bucket allowed (twice the pass
budget). A pass that rounds up to no allowed bucket runs eagerly, and so does every pass
after a capture fails.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger("asrctl")

# (B, T, D) features and (B,) lengths -> (B, T', H) outputs and (B,) output lengths
Core = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

# Graphs cover passes of up to this much padded audio (seconds): small passes, where a
# pass's own overhead dominates. On an H100 (BENCHMARKS.md, round 13) graphs ran one 5 s
# clip 5.4x faster than eager, 16 utterances 2.1x, 48 utterances only 1.31x; larger passes
# run eagerly, and the graphs' memory stays that of a small pass. Captured for every pass
# up to the server's whole budget (1,920 s of cells), they did not fit beside vLLM.
GRAPH_PASS_SECONDS = 240.0
# A pass within that rounds up to a bucket of up to ~1.5 x 1.5 its cells: buckets may hold
# twice as much, so that most such passes still replay a graph.
GRAPH_BUDGET_FACTOR = 2
BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
FRAME_SIZES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class Buckets:
    """The padded shapes graphs are captured for: utterances and frames a pass, with at
    most ``cells`` (utterances × frames) in one, the encoder's pass budget."""

    cells: int
    batch: tuple[int, ...] = BATCH_SIZES
    frames: tuple[int, ...] = FRAME_SIZES

    def pick(self, batch: int, frames: int) -> tuple[int, int] | None:
        """The smallest bucket holding ``batch`` × ``frames``; None if none within budget."""
        b = bisect.bisect_left(self.batch, batch)
        t = bisect.bisect_left(self.frames, frames)
        if b == len(self.batch) or t == len(self.frames):
            return None
        key = (self.batch[b], self.frames[t])
        return key if key[0] * key[1] <= self.cells else None


@dataclass
class _Graph:
    feats: Tensor  # static input views
    lengths: Tensor
    out: Tensor  # static outputs
    out_lengths: Tensor
    replay: Callable[[], Any]


class GraphedCore:
    """``core`` on padded buckets, each captured once as a CUDA graph and replayed.

    ``capture`` is the hook tests use to run the same bucketing on a CPU (the default
    captures a CUDA graph)."""

    def __init__(
        self,
        core: Core,
        buckets: Buckets,
        *,
        feature_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        capture: Callable[[Core, Tensor, Tensor], tuple[Tensor, Tensor, Callable[[], Any]]]
        | None = None,
    ) -> None:
        self.core = core
        self.buckets = buckets
        self._capture = capture or _cuda_capture
        self._feats = torch.zeros(buckets.cells * feature_dim, dtype=dtype, device=device)
        self._lengths = torch.ones(max(buckets.batch), dtype=torch.long, device=device)
        self._dim = feature_dim
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._lock = threading.Lock()  # one pass at a time uses the static buffers
        self.failed = False

    def __call__(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``core(feats, lengths)`` for a right-padded (B, T, D) batch: each row's valid
        outputs (the first ``out_lengths[i]``) as ``core`` gives them."""
        batch, frames, _ = feats.shape
        key = None if self.failed else self.buckets.pick(batch, frames)
        if key is None:
            return self.core(feats, lengths)
        with self._lock:
            graph = self._graphs.get(key) or self._new(key)
            if graph is None:  # the capture failed: every pass from now on is eager
                return self.core(feats, lengths)
            graph.feats.zero_()
            graph.feats[:batch, :frames].copy_(feats)
            graph.lengths.fill_(1)
            graph.lengths[:batch].copy_(lengths)
            graph.replay()
            # the next replay overwrites the outputs: the caller gets its own copy
            return graph.out[:batch].clone(), graph.out_lengths[:batch].clone()

    @property
    def captured(self) -> list[tuple[int, int]]:
        """The buckets captured so far."""
        return sorted(self._graphs)

    def _new(self, key: tuple[int, int]) -> _Graph | None:
        batch, frames = key
        feats = self._feats[: batch * frames * self._dim].view(batch, frames, self._dim)
        lengths = self._lengths[:batch]
        feats.zero_()
        lengths.fill_(1)
        try:
            out, out_lengths, replay = self._capture(self.core, feats, lengths)
        except Exception:  # an experimental path must not fail requests: go eager
            log.exception("audio encoder: CUDA graph capture failed; encoding eagerly")
            self.failed = True
            return None
        log.debug("audio encoder: captured a graph for %d utterances x %d frames", *key)
        self._graphs[key] = _Graph(feats, lengths, out, out_lengths, replay)
        return self._graphs[key]


_POOL: dict[torch.device, Any] = {}


def _cuda_capture(
    core: Core, feats: Tensor, lengths: Tensor
) -> tuple[Tensor, Tensor, Callable[[], Any]]:
    """Warm ``core`` up on a side stream, then capture it into one pool shared by every
    graph of the device (only this thread's work is captured: vLLM may run beside it)."""
    side = torch.cuda.Stream(feats.device)
    side.wait_stream(torch.cuda.current_stream(feats.device))
    with torch.cuda.stream(side):
        for _ in range(2):
            core(feats, lengths)
    torch.cuda.current_stream(feats.device).wait_stream(side)
    pool = _POOL.setdefault(feats.device, torch.cuda.graph_pool_handle())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out, out_lengths = core(feats, lengths)
    return out, out_lengths, graph.replay
