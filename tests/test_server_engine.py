"""``AsyncModel`` (asrctl.server.engine) with the real adapter, encoder, text embedder and
encoder batcher of the tiny Fun-ASR-Nano fixture, and a stand-in for vLLM's ``AsyncLLM``
(no engine starts; live-engine tests are in ``test_serve_vllm.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from asrctl import engine as engine_module
from asrctl.adapters.base import PromptOptions
from asrctl.engine import EngineOptions
from asrctl.errors import OptionsError
from asrctl.server.engine import AsyncModel, DecodeOptions

SR = 16000


class FakeAsyncLLM:
    """Answers every request with one finished output ``ok``; records the prompt lengths."""

    def __init__(self, max_model_len: int) -> None:
        self.model_config = SimpleNamespace(max_model_len=max_model_len)
        self.prompt_lengths: list[int] = []

    async def generate(self, request, params, request_id):
        self.prompt_lengths.append(len(request["prompt_embeds"]))
        done = SimpleNamespace(text="ok", token_ids=[1], finish_reason="stop")
        yield SimpleNamespace(finished=True, outputs=[done])

    def shutdown(self) -> None:
        pass


def _noise(seconds: float) -> np.ndarray:
    return (0.1 * np.random.default_rng(0).standard_normal(round(SR * seconds))).astype(np.float32)


def test_too_long_audio_is_refused_before_encoding(
    fun_asr_tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prompt longer than max_model_len is an OptionsError (a 400 through ServerState)
    naming its positions and the limit, raised before the encoder runs; the next request
    is served."""
    pytest.importorskip("vllm")  # AsyncModel.stream builds vLLM's SamplingParams
    engine = FakeAsyncLLM(max_model_len=1)
    monkeypatch.setattr(engine_module, "start_vllm", lambda *a, **k: engine)
    encoded: list[int] = []

    real = None

    class Spy:
        word_timing = False

        def encode(self, waves, *, timing=False):
            encoded.extend(len(w) for w in waves)
            return real.encode(waves, timing=timing)

    async def scenario() -> tuple[OptionsError, str, int, int]:
        model = await AsyncModel.start(
            fun_asr_tiny, EngineOptions(), device="cpu", batch_window_s=0.0,
            encoder_batch_size=4, max_tokens=8,
        )  # fmt: skip
        nonlocal real
        real = model.pipeline.encoder
        model.pipeline.encoder = Spy()  # type: ignore[assignment]
        one_second = model.pipeline.prompt_positions(SR, PromptOptions())
        twenty = model.pipeline.prompt_positions(20 * SR, PromptOptions())
        engine.model_config.max_model_len = one_second + 4
        try:
            with pytest.raises(OptionsError) as info:
                await model.transcribe(_noise(20.0), PromptOptions(), DecodeOptions())
            result = await model.transcribe(_noise(1.0), PromptOptions(), DecodeOptions())
        finally:
            await model.close()
        assert engine.prompt_lengths == [one_second]  # the formula equals the real prompt
        return info.value, result.text, twenty, model.max_model_len

    error, text, positions, limit = asyncio.run(scenario())
    assert positions >= limit
    assert str(error).startswith(f"audio: prompt of {positions} positions (20.0 s of audio)")
    assert f"--max-model-len {limit}" in str(error) and "larger --max-model-len" in str(error)
    assert encoded == [SR] and text == "ok"
