"""The transcription pipeline's pure parts: encoder sub-batching, loaded-batch sizes, options."""

from __future__ import annotations

import itertools

import pytest
import torch

from asrctl.errors import OptionsError
from asrctl.transcribe import TranscribeOptions, length_batches

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


def test_first_loaded_batches_ramp_up_to_batch_size():
    from asrctl.transcribe import _chunks

    sizes = [len(b) for b in _chunks(range(1000), 300, first=64)]
    assert sizes == [64, 128, 256, 300, 252]
    assert [len(b) for b in _chunks(range(5), 2, first=64)] == [2, 2, 1]
    assert [x for b in _chunks(range(1000), 300, first=64) for x in b] == list(range(1000))


@pytest.mark.parametrize(("gpu", "size"), [(True, 1024), (False, 64)])
def test_default_batch_size_is_large_on_a_gpu_only(monkeypatch, gpu, size):
    from asrctl import transcribe
    from asrctl.cli._common import transcribe_options

    monkeypatch.setattr(transcribe, "cuda_available", lambda: gpu)
    options = transcribe_options(language=None, hotwords=None, no_itn=False, batch_size=None,
                                 max_tokens=None)  # fmt: skip
    assert options.batch_size == size == transcribe.default_batch_size()
    given = transcribe_options(language=None, hotwords=None, no_itn=False, batch_size=8,
                               max_tokens=None)  # fmt: skip
    assert given.batch_size == 8


def test_encoder_dtype_names_the_choices():
    from asrctl.pipeline import ENCODER_DTYPES, resolve_encoder_dtype

    assert resolve_encoder_dtype("bfloat16") is torch.bfloat16
    assert resolve_encoder_dtype("float32") is torch.float32
    with pytest.raises(OptionsError, match="float32 or bfloat16"):
        resolve_encoder_dtype("float16")  # no parity test covers it
    assert ENCODER_DTYPES == ("float32", "bfloat16")
