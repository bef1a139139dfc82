"""Batching waveforms for an encoder: very short inputs, and one copy to the device.

Every non-empty clip gives at least one audio embedding.

An encoder's length formula gives no embedding for a clip shorter than its first
analysis window (Fun-ASR-Nano: one 25 ms fbank frame; FireRedASR and GLM-ASR: enough
frames for their convolutions and frame stacking), and such a clip alone in an encoder
pass would crash the convolution or reach the LLM as a prompt without audio. Encoders
therefore zero-pad a clip up to :func:`shortest_input` samples (silence after it), and
the adapter's ``audio_positions`` counts the padded length, so the count and the
encoder's output always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

SEARCH_LIMIT = 1 << 22  # samples (~4 min at 16 kHz): no encoder needs more for one embedding


def shortest_input(positions: Callable[[int], int]) -> int:
    """The fewest samples (at least 1) for which the non-decreasing length formula
    ``positions`` gives an embedding."""
    high = 1
    while positions(high) < 1:
        high *= 2
        if high > SEARCH_LIMIT:
            raise ValueError("the length formula gives no embedding for any input length")
    low = high // 2 + 1 if high > 1 else 1
    while low < high:  # positions(high) >= 1 > positions(low - 1)
        mid = (low + high) // 2
        if positions(mid) >= 1:
            high = mid
        else:
            low = mid + 1
    return high


def pad_short(waves: Sequence[Tensor], min_samples: int) -> list[Tensor]:
    """Each wave, zero-padded at its end to ``min_samples`` where it is shorter."""
    return [
        w if len(w) >= min_samples else torch.nn.functional.pad(w, (0, min_samples - len(w)))
        for w in waves
    ]


def padded_batch(waves: Sequence[Tensor], device: torch.device, width: int = 0) -> Tensor:
    """``(B, max(width, longest))`` float32 on ``device``, each wave at the start of its
    row and zeros after it, from one host-to-device copy of the waves end to end. (A copy
    per wave from pageable memory waits for the device once per wave, and under a busy
    GPU each wait can cost milliseconds.)"""
    lengths = [len(w) for w in waves]
    flat = torch.cat([w.reshape(-1).to(torch.float32) for w in waves]).to(device)
    batch = torch.zeros(len(waves), max(width, *lengths), device=device)
    for row, piece in zip(batch, flat.split(lengths), strict=True):
        row[: len(piece)] = piece  # on the device: queued, no wait
    return batch
