"""``AsyncModel`` (asrctl.server.engine) with the real adapter, encoder, text embedder and
encoder batcher of the tiny Fun-ASR-Nano fixture, and asrctl.testing's fake ``AsyncLLM``
(no vLLM; live-engine tests are in ``test_serve_vllm.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from asrctl import testing
from asrctl.adapters.base import PromptOptions
from asrctl.adapters.registry import load_adapter
from asrctl.errors import OptionsError
from asrctl.export import export_llm
from asrctl.server.engine import AsyncModel, DecodeOptions
from asrctl.transcribe import prompt_positions

SR = 16000


def _noise(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(round(SR * seconds))).astype(np.float32)


def test_too_long_audio_is_refused_before_encoding(fake_engine, fun_asr_tiny: Path) -> None:
    """A prompt longer than max_model_len is an OptionsError (a 400 through ServerState)
    naming its positions and the limit, raised before the encoder runs; the next request
    is served."""
    adapter = load_adapter(fun_asr_tiny)
    llm_dir = export_llm(adapter).llm_dir
    real = adapter.audio_encoder("cpu", torch.float32)
    encoded: list[int] = []

    class Spy:
        word_timing = False

        def encode(self, waves, *, timing=False):
            encoded.extend(len(w) for w in waves)
            return real.encode(waves, timing=timing)

    encoder = Spy()

    async def scenario() -> tuple[OptionsError, str, int, int]:
        engine = testing.fake_engine({"model": str(llm_dir)}, asynchronous=True)
        model = AsyncModel(
            adapter, llm_dir, encoder, engine, "float32",
            batch_window_s=0.0, encoder_batch_size=4, max_tokens=8,
        )  # fmt: skip
        one_second = prompt_positions(adapter, model.embed_text, PromptOptions(), SR)
        twenty = prompt_positions(adapter, model.embed_text, PromptOptions(), 20 * SR)
        model.max_model_len = one_second + 4
        try:
            with pytest.raises(OptionsError) as info:
                await model.transcribe(_noise(20.0), PromptOptions(), DecodeOptions())
            result = await model.transcribe(_noise(1.0), PromptOptions(), DecodeOptions())
        finally:
            await model.close()
        assert [n for _, n, _ in engine.requests] == [one_second]  # the formula is exact
        return info.value, result.text, twenty, model.max_model_len

    error, text, positions, limit = asyncio.run(scenario())
    assert positions >= limit
    assert str(error).startswith(f"audio: prompt of {positions} positions (20.0 s of audio)")
    assert f"--max-model-len {limit}" in str(error) and "larger --max-model-len" in str(error)
    assert encoded == [SR] and set(text.split()) <= set(testing.WORDS)
