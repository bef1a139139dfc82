"""The transcription pipeline's pure parts: encoder sub-batching, options, host copies."""

from __future__ import annotations

import itertools

import pytest
import torch

from asrctl.errors import OptionsError
from asrctl.transcribe import TranscribeOptions, _to_host, length_batches

LENGTHS = [5, 30, 2, 30, 8, 12, 3, 7, 30, 1]


def _padded(batch: list[int]) -> int:
    return len(batch) * max(LENGTHS[i] for i in batch)


def test_batches_cover_every_index_once_longest_first():
    batches = length_batches(LENGTHS, size=3)
    flat = list(itertools.chain.from_iterable(batches))
    assert sorted(flat) == list(range(len(LENGTHS)))
    assert [LENGTHS[i] for i in flat] == sorted(LENGTHS, reverse=True)
    assert [len(b) for b in batches] == [3, 3, 3, 1]


def test_shortest_first_order():
    flat = list(itertools.chain.from_iterable(length_batches(LENGTHS, 4, longest_first=False)))
    assert [LENGTHS[i] for i in flat] == sorted(LENGTHS)


def test_budget_bounds_padded_size_and_lets_short_items_share_a_pass():
    batches = length_batches(LENGTHS, size=100, budget=60)
    assert all(_padded(b) <= 60 for b in batches)
    # the three 30s go in pairs at most; the short tail shares one large pass
    assert [LENGTHS[i] for i in batches[0]] == [30, 30]
    assert len(batches[-1]) >= 4
    # greedy: no batch could have taken the next item without passing the budget
    for b, nxt in itertools.pairwise(batches):
        assert _padded(b + nxt[:1]) > 60


def test_an_item_longer_than_the_budget_is_a_batch_of_its_own():
    batches = length_batches([100, 10, 10], size=8, budget=50)
    assert batches == [[0], [1, 2]]


def test_size_still_caps_a_budgeted_batch():
    assert [len(b) for b in length_batches([1] * 10, size=4, budget=1000)] == [4, 4, 2]


def test_empty_input_gives_no_batches():
    assert length_batches([], size=4, budget=10) == []


@pytest.mark.parametrize("seconds", [0.0, -1.0])
def test_non_positive_encoder_budget_is_refused(seconds):
    with pytest.raises(OptionsError, match="encoder-batch-seconds"):
        TranscribeOptions(encoder_batch_seconds=seconds)


def test_host_copy_keeps_each_embedding_and_converts_dtype():
    embeds = [torch.randn(n, 4) for n in (3, 1, 5)]
    host = _to_host(embeds, torch.bfloat16)
    assert [h.shape for h in host] == [e.shape for e in embeds]
    assert all(h.dtype == torch.bfloat16 for h in host)
    for h, e in zip(host, embeds, strict=True):
        assert torch.equal(h, e.to(torch.bfloat16))
