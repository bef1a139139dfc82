"""The transcription pipeline: its pure parts (encoder sub-batching, loaded-batch sizes,
options), then the Transcriber end to end on asrctl.testing's fake engine (failures,
limits, modes, keys). Token parity with transformers on real vLLM: test_transcribe_vllm.py.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from speechlike import noise

from asrctl import testing
from asrctl.adapters.base import PromptOptions
from asrctl.engine import FAKE_ENGINE_ENV, EngineOptions
from asrctl.errors import OptionsError
from asrctl.inputs import from_arrays
from asrctl.results import Failure, Transcript
from asrctl.transcribe import TranscribeOptions, Transcriber, length_batches

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
    from asrctl.pipeline import ENCODER_DTYPES, encoder_precision, resolve_encoder_dtype

    assert resolve_encoder_dtype("bfloat16") is torch.bfloat16
    assert resolve_encoder_dtype("float32") is torch.float32
    assert resolve_encoder_dtype("tf32") is torch.float32  # float32 weights, TF32 matmuls
    with pytest.raises(OptionsError, match="float32, tf32, bfloat16"):
        resolve_encoder_dtype("float16")  # no parity test covers it
    assert ENCODER_DTYPES == ("auto", "float32", "tf32", "bfloat16")
    assert encoder_precision("auto", "cuda") == "tf32"
    assert encoder_precision("auto", "cpu") == "float32"
    assert encoder_precision("bfloat16", "cuda") == "bfloat16"


SR = 16000
DURATIONS = (0.3, 0.7, 1.0, 1.6, 2.5, 3.3, 4.8, 6.1, 9.7)  # seconds: 9 different lengths
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def transcriber(fun_asr_tiny):
    options = EngineOptions(dtype="float32", max_model_len=1024)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAKE_ENGINE_ENV, "1")
        with Transcriber(fun_asr_tiny, engine_options=options, device="cpu") as t:
            yield t


@pytest.fixture(scope="module")
def audios():
    return [noise(s, seed) for seed, s in enumerate(DURATIONS)]


def _run(transcriber, arrays, **options) -> list[Transcript | Failure]:
    items = from_arrays(arrays, SR)
    opts = TranscribeOptions(**({"max_tokens": MAX_TOKENS} | options))
    results = [r for batch in transcriber.transcribe(items, opts) for r in batch]
    return sorted(results, key=lambda r: r.key)


def test_every_key_gets_its_own_text_whatever_the_batching(transcriber, audios):
    one = _run(transcriber, audios, batch_size=1, encoder_batch_size=1)
    many = _run(transcriber, audios, batch_size=9, encoder_batch_size=9)
    assert [type(r) for r in one] == [Transcript] * len(DURATIONS)
    assert [(r.key, r.text) for r in one] == [(r.key, r.text) for r in many]
    assert len({r.text for r in one}) == len(DURATIONS)  # the fake answers by the audio
    assert all(set(r.text.split()) <= set(testing.WORDS) for r in one)
    assert [r.duration for r in one] == [round(s, 3) for s in DURATIONS]


def test_audio_token_counts_follow_the_low_frame_rate_formula(transcriber, audios):
    from asrctl.models.funasr_adaptor import fun_asr_audio_token_count

    embeds = transcriber.encode(audios, 4)
    for audio, emb in zip(audios, embeds, strict=True):
        fbank_frames = 1 + (len(audio) - 400) // 160
        lfr = -(-fbank_frames // 6)
        assert emb.shape == (fun_asr_audio_token_count(lfr), 128)


def test_prompt_text_is_embedded_with_the_llm_table(transcriber):
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(transcriber.prepared.llm_dir, dtype=torch.float32)
    prompt = transcriber.adapter.prompt(PromptOptions(language="en", hotwords=("asr", "vLLM")))
    ids = transcriber.engine.embed_text.token_ids(prompt.prefix)
    expected = llm.get_input_embeddings()(torch.tensor(ids))
    assert torch.equal(transcriber.engine.embed_text(prompt.prefix), expected)


def test_bad_and_over_long_inputs_fail_alone(transcriber, audios):
    nan = audios[0].copy()
    nan[10] = np.nan
    results = _run(transcriber, [audios[1], nan, noise(30.5, 99), audios[2]], batch_size=4)
    failures = {r.key: r.error for r in results if isinstance(r, Failure)}
    assert set(failures) == {"0001", "0002"}
    assert "NaN" in failures["0001"]
    assert "30.5 s" in failures["0002"] and "at most 30 s" in failures["0002"]
    assert [r.key for r in results if isinstance(r, Transcript)] == ["0000", "0003"]


def test_unsupported_language_is_rejected_before_any_work(transcriber, audios):
    with pytest.raises(OptionsError, match="language"):
        _run(transcriber, audios[:1], language="xx")
    assert not transcriber.engine.busy


def test_fixed_work_mode_generates_ceil_tokens_per_second(transcriber, audios):
    results = _run(transcriber, audios, tokens_per_second=4.0, batch_size=4)
    for r, seconds in zip(results, DURATIONS, strict=True):
        assert len(r.token_ids) == math.ceil(4.0 * seconds), r.key
        assert r.finish_reason == "length"


def test_max_tokens_cuts_with_finish_reason_length(transcriber, audios):
    full = _run(transcriber, audios[:3])
    cut = _run(transcriber, audios[:3], max_tokens=2)
    for f, c in zip(full, cut, strict=True):
        assert c.finish_reason == "length" and c.token_ids == f.token_ids[:2]
        assert f.text.startswith(c.text)


def test_a_tiny_in_flight_window_still_returns_every_key_once(transcriber, audios):
    results = _run(transcriber, audios, batch_size=2, max_in_flight=1)
    assert [r.key for r in results] == [f"{i:04d}" for i in range(len(DURATIONS))]
    assert all(isinstance(r, Transcript) for r in results)
