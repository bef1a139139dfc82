"""VibeVoice-ASR through real vLLM (one engine for the module): greedy tokens equal
transformers' ``VibeVoiceAsrForConditionalGeneration.generate`` on the same weights, and
results degrade to plain text (no segments, a warning) when the model writes no JSON, as
random weights do. The parse path to segments is tested on crafted outputs in
``test_vibevoice_asr.py``.

The engine runs the original-layout fixture (exported as ``Qwen2ForCausalLM``); the
reference runs the ``-HF`` fixture of the same seed (identical tensors) with ``vae_std = 0``
(asrctl uses the VAE mean), fed the same prompt as token ids, the audio slots being
``<|box_start|>`` (its ``audio_token_id``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from asrctl.adapters.base import PromptOptions
from asrctl.engine import EngineOptions
from asrctl.inputs import from_arrays
from asrctl.results import Failure, Transcript
from asrctl.transcribe import TranscribeOptions, Transcriber

pytestmark = pytest.mark.vllm
SR = 24000
DURATIONS = (0.5, 1.3, 2.2, 3.0)  # 4, 10, 17 and 23 audio positions
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def dirs(vibevoice_dirs: dict[str, Path]) -> dict[str, Path]:
    return vibevoice_dirs


@pytest.fixture(scope="module")
def arrays() -> list[np.ndarray]:
    out = []
    for i, seconds in enumerate(DURATIONS):
        rng = np.random.default_rng(10 + i)
        t = np.arange(round(SR * seconds)) / SR
        x = 0.3 * np.sin(2 * np.pi * (200 + 300 * i) * t * (1 + t)) + 0.05 * rng.standard_normal(
            t.size
        )
        out.append(x.astype(np.float32))
    return out


@pytest.fixture(scope="module")
def transcriber(dirs):
    options = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=2048)
    with Transcriber(dirs["original"], engine_options=options, device="cpu") as t:
        yield t


@pytest.fixture(scope="module")
def reference(dirs):
    from transformers import (
        AutoTokenizer,
        VibeVoiceAcousticTokenizerFeatureExtractor,
        VibeVoiceAsrForConditionalGeneration,
    )

    model = VibeVoiceAsrForConditionalGeneration.from_pretrained(dirs["hf"], dtype=torch.float32)
    model.config.acoustic_tokenizer_encoder_config.vae_std = 0.0
    return (
        model.eval(),
        AutoTokenizer.from_pretrained(dirs["hf"]),
        VibeVoiceAcousticTokenizerFeatureExtractor(),
    )


def _ref_tokens(reference, adapter, wave: np.ndarray, hotwords=()) -> list[int]:
    model, tok, fe = reference
    feats = fe(wave, sampling_rate=SR)
    n_audio = int(feats["padding_mask"].sum() + 3199) // 3200
    prompt = adapter.prompt_for_audio(PromptOptions(hotwords=hotwords), len(wave) / SR)
    ids = (
        tok.encode(prompt.prefix, add_special_tokens=False)
        + [model.config.audio_token_id] * n_audio
        + tok.encode(prompt.suffix, add_special_tokens=False)
    )
    stops = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            input_values=feats["input_values"],
            padding_mask=feats["padding_mask"],
            do_sample=False,
            max_new_tokens=MAX_TOKENS,
            eos_token_id=stops,
            pad_token_id=stops[1],
        )
    new = out[0, len(ids) :].tolist()
    for i, t in enumerate(new):
        if t in stops:
            return new[: i + 1]
    return new


def _transcribe(transcriber, arrays, **options) -> list[Transcript | Failure]:
    items = from_arrays(arrays, SR)
    opts = TranscribeOptions(max_tokens=MAX_TOKENS, **options)
    results = [r for batch in transcriber.transcribe(items, opts) for r in batch]
    return sorted(results, key=lambda r: r.key)


def test_greedy_tokens_equal_transformers(transcriber, reference, arrays, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="asrctl"):
        results = _transcribe(transcriber, arrays)
    assert [type(r) for r in results] == [Transcript] * len(arrays)
    for i, (r, wave) in enumerate(zip(results, arrays, strict=True)):
        expected = _ref_tokens(reference, transcriber.adapter, wave)
        assert list(r.token_ids) == expected, f"utt{i}: vLLM {r.token_ids} != HF {expected}"
    assert len({r.token_ids for r in results}) == len(results)  # outputs depend on the audio
    # random weights write no JSON: plain text, no segments, a warning, no crash
    assert all(r.segments is None for r in results)
    assert "VibeVoice-ASR" in caplog.text and "plain text" in caplog.text


def test_hotword_context_equals_transformers(transcriber, reference, arrays) -> None:
    hotwords = ("VibeVoice", "asrctl")
    (result,) = _transcribe(transcriber, arrays[1:2], hotwords=hotwords)
    assert list(result.token_ids) == _ref_tokens(
        reference, transcriber.adapter, arrays[1], hotwords
    )


def test_language_option_is_refused(transcriber, arrays) -> None:
    from asrctl.errors import OptionsError

    with pytest.raises(OptionsError):
        _transcribe(transcriber, arrays[:1], language="en")


def test_too_long_input_fails_before_encoding(transcriber, arrays, monkeypatch) -> None:
    """300 s need 2,250 audio positions, more than max_model_len 2048: that input fails at
    once, named with its positions and the limit, its audio never reaching the encoder,
    while the batch's other inputs are transcribed."""
    long_wave = np.full(SR * 300, 0.01, np.float32)
    real = transcriber.encoder
    seen: list[int] = []

    class Spy:
        word_timing = False

        def encode(self, waves, *, timing=False):
            seen.extend(len(w) for w in waves)
            if any(len(w) > SR * 10 for w in waves):
                raise AssertionError("the over-long input reached the encoder")
            return real.encode(waves, timing=timing)

    monkeypatch.setattr(transcriber, "encoder", Spy())
    items = from_arrays({"a": arrays[0], "long": long_wave, "b": arrays[1]}, SR)
    opts = TranscribeOptions(max_tokens=4)
    results = {r.key: r for batch in transcriber.transcribe(items, opts) for r in batch}
    assert isinstance(results["a"], Transcript) and isinstance(results["b"], Transcript)
    assert sorted(seen) == sorted([len(arrays[0]), len(arrays[1])])
    failure = results["long"]
    assert isinstance(failure, Failure)
    prompt = transcriber.adapter.prompt_for_audio(PromptOptions(), 300.0)
    ids = transcriber.engine.embed_text.token_ids
    positions = len(ids(prompt.prefix)) + SR * 300 // 3200 + len(ids(prompt.suffix))
    assert failure.error.startswith(f"long: prompt of {positions} positions (300.0 s of audio)")
    assert "--max-model-len 2048" in failure.error
    assert failure.error.endswith("raise --max-model-len or use --vad")
