"""Parity of asrctl's GLM-ASR-Nano path with transformers' ``GlmAsrForConditionalGeneration``
(fp32, CPU, tiny fixture).

The reference is transformers itself (``glmasr``, present since 5.0; vLLM brings
transformers along): ``GlmAsrProcessor`` (WhisperFeatureExtractor + the fixture's tokenizer
and chat template) builds the inputs with ``apply_transcription_request``, exactly as the
model card does, and the model computes the audio embeddings (``get_audio_features``) and
decodes greedily (``generate(do_sample=False)``), each utterance alone.

What is compared:

* audio embeddings: ours batched over every utterance (windows of different utterances in
  one encoder batch) vs the reference's per utterance, including 2- and 3-window audio;
* greedy tokens of vLLM (one engine for the module, via ``Transcriber``) vs the reference's
  ``generate`` on five utterances, two of them longer than 30 s (several windows whose
  audio tokens are concatenated into one prompt).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from glm_reference import SR, chirp, transformers_glm
from precision import assert_bf16_close

from asrctl.adapters.registry import load_adapter
from asrctl.engine import EngineOptions
from asrctl.fixtures import make_fixture
from asrctl.inputs import from_arrays
from asrctl.models import glm_asr as glm_asr_models
from asrctl.models.glm_asr import glm_asr_token_count
from asrctl.results import Failure, Transcript
from asrctl.transcribe import TranscribeOptions, Transcriber

DURATIONS = (0.7, 3.3, 9.1, 31.4, 61.2)  # s: 1, 1, 1, 2 and 3 windows of 30 s
MAX_TOKENS = 24
EMBED_ATOL = 1e-5  # fp32, same encoder module, our log-mel (measured 0.0 on CPU)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fixture("glm-asr-nano", tmp_path_factory.mktemp("glm") / "GLM-ASR-Nano-2512")


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    return [chirp(s, i) for i, s in enumerate(DURATIONS)]


@pytest.fixture(scope="module")
def reference(model_dir: Path):
    return transformers_glm(model_dir)


@pytest.fixture(scope="module")
def transcriber(model_dir: Path):
    options = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
    with Transcriber(model_dir, engine_options=options, device="cpu") as t:
        yield t


@torch.no_grad()
def _ref_embeddings(reference, audio: np.ndarray) -> torch.Tensor:
    processor, model = reference
    inputs = processor.apply_transcription_request(audio)
    out = model.model.get_audio_features(inputs["input_features"], inputs["input_features_mask"])
    return out.pooler_output


@torch.no_grad()
def _ref_tokens(reference, audio: np.ndarray) -> list[int]:
    processor, model = reference
    inputs = processor.apply_transcription_request(audio)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=MAX_TOKENS)
    tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
    stops = set(model.generation_config.eos_token_id)
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return tokens


@pytest.mark.parametrize("windows_per_pass", [16, 3])
@torch.no_grad()
def test_audio_embeddings_match_transformers(
    model_dir: Path, reference, arrays, windows_per_pass: int, monkeypatch
) -> None:
    """All utterances in one call; with 3 windows per pass the 3-window one spans two."""
    monkeypatch.setattr(glm_asr_models, "WINDOWS_PER_PASS", windows_per_pass)
    ours = load_adapter(model_dir).audio_encoder("cpu", torch.float32)
    embeds = ours([torch.from_numpy(a) for a in arrays])  # every utterance in one batch
    for seconds, audio, emb in zip(DURATIONS, arrays, embeds, strict=True):
        ref = _ref_embeddings(reference, audio)
        assert emb.shape == ref.shape, f"{seconds} s: {tuple(emb.shape)} vs {tuple(ref.shape)}"
        diff = float((emb - ref).abs().max())
        assert diff <= EMBED_ATOL, f"{seconds} s: audio embeddings max abs diff {diff:.3g}"
    frames = [-(-len(a) // 160) for a in arrays]
    assert len(embeds[-1]) == 2 * 375 + glm_asr_token_count(frames[-1] - 2 * 3000)


@torch.no_grad()
def test_bfloat16_encoder_stays_close_to_transformers(model_dir: Path, reference, arrays) -> None:
    """asrctl's --encoder-dtype bfloat16 against the float32 reference."""
    half = load_adapter(model_dir).audio_encoder("cpu", torch.bfloat16)
    embeds = half([torch.from_numpy(a) for a in arrays])
    assert_bf16_close(embeds, [_ref_embeddings(reference, a) for a in arrays])


@pytest.mark.vllm
def test_greedy_tokens_equal_transformers_generate(transcriber, reference, arrays) -> None:
    items = from_arrays(arrays, SR)
    opts = TranscribeOptions(max_tokens=MAX_TOKENS, repetition_penalty=1.0)
    results = sorted(
        (r for batch in transcriber.transcribe(items, opts) for r in batch), key=lambda r: r.key
    )
    assert [type(r) for r in results] == [Transcript] * len(arrays), results
    tokenizer = reference[0].tokenizer
    for seconds, audio, r in zip(DURATIONS, arrays, results, strict=True):
        expected = _ref_tokens(reference, audio)
        assert list(r.token_ids) == expected, f"{seconds} s"
        text = tokenizer.decode(expected, skip_special_tokens=True).strip()
        held_back = text[len(r.text) :]  # vLLM holds back an undecodable byte tail
        assert text.startswith(r.text) and (not held_back or "\ufffd" in held_back), seconds
    assert len({r.token_ids for r in results}) == len(results)  # outputs depend on the audio


@pytest.mark.vllm
def test_over_655_seconds_fails_naming_the_key(transcriber, arrays) -> None:
    long = np.tile(arrays[0], 1000)[: 656 * SR]
    items = from_arrays([long], SR)
    (result,) = [r for batch in transcriber.transcribe(items) for r in batch]
    assert isinstance(result, Failure) and result.key == items[0].key
    assert "at most 655 s" in result.error, result.error
