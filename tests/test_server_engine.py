"""``AsyncModel`` (asrctl.server.engine) with the real adapter, encoder, text embedder and
encoder batcher of the tiny Fun-ASR-Nano fixture, and asrctl.testing's fake ``AsyncLLM``
(no vLLM; live-engine tests are in ``test_serve_vllm.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from speechlike import noise

from asrctl import testing
from asrctl.adapters.base import PromptOptions
from asrctl.engine import EngineOptions
from asrctl.errors import OptionsError
from asrctl.server.engine import AsyncModel, DecodeOptions

SR = 16000


def test_too_long_audio_is_refused_before_encoding(fake_engine, fun_asr_tiny: Path) -> None:
    """A prompt longer than max_model_len is an OptionsError (a 400 through ServerState)
    naming its positions and the limit, raised before the encoder runs; the next request
    is served."""
    encoded: list[int] = []

    real = engine = None

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
        nonlocal real, engine
        engine = model.engine.engine
        assert isinstance(engine, testing.FakeAsyncLLM)
        real = model.pipeline.encoder
        model.pipeline.encoder = Spy()  # type: ignore[assignment]
        one_second = model.pipeline.prompt_positions(SR, PromptOptions())
        twenty = model.pipeline.prompt_positions(20 * SR, PromptOptions())
        engine.model_config.max_model_len = one_second + 4
        try:
            with pytest.raises(OptionsError) as info:
                await model.transcribe(noise(20.0), PromptOptions(), DecodeOptions())
            result = await model.transcribe(noise(1.0), PromptOptions(), DecodeOptions())
        finally:
            await model.close()
        assert [n for _, n, _ in engine.requests] == [one_second]  # the formula is exact
        return info.value, result.text, twenty, model.max_model_len

    error, text, positions, limit = asyncio.run(scenario())
    assert positions >= limit
    assert str(error).startswith(f"audio: prompt of {positions} positions (20.0 s of audio)")
    assert f"--max-model-len {limit}" in str(error) and "larger --max-model-len" in str(error)
    assert encoded == [SR] and set(text.split()) <= set(testing.WORDS)


def test_transcribe_asks_vllm_for_the_final_output_only(fake_engine, fun_asr_tiny: Path) -> None:
    """A whole-result request (every non-streaming route) gets no per-token outputs from
    vLLM, nor its detokenizer: the text is decoded once, as the batch path does; it equals
    the streamed request's final text, and streaming still yields partial text."""

    async def scenario():
        model = await AsyncModel.start(
            fun_asr_tiny, EngineOptions(), device="cpu", batch_window_s=0.0,
            encoder_batch_size=4, max_tokens=8,
        )  # fmt: skip
        try:
            audio = noise(1.0)
            done = await model.transcribe(audio, PromptOptions(), DecodeOptions())
            steps = [p async for p in model.stream(audio, PromptOptions(), DecodeOptions())]
        finally:
            await model.close()
        return done, steps, model.engine.engine.requests

    done, steps, requests = asyncio.run(scenario())
    params = [p for _, _, p in requests]
    assert [p.output_kind.name for p in params] == ["FINAL_ONLY", "CUMULATIVE"]
    assert [p.detokenize for p in params] == [False, True]
    final = steps[-1].result
    assert final is not None and len(steps) > 2
    assert done.text and done.text == final.text
    assert done.token_ids == final.token_ids


def test_encoder_passes_keep_an_audio_budget(fake_engine, fun_asr_tiny: Path) -> None:
    """Requests batched together are encoded in sub-batches of at most
    ``encoder_batch_size`` utterances and ``encoder_batch_seconds`` of padded audio (the
    batch path's rule, and by default its budget), so a large batch size cannot take more
    encoder memory than asked; every request still gets its own result."""
    passes: list[int] = []
    real = None

    class Spy:
        word_timing = False

        def encode(self, waves, *, timing=False):
            passes.append(len(waves))
            return real.encode(waves, timing=timing)

    async def scenario():
        nonlocal real
        model = await AsyncModel.start(
            fun_asr_tiny, EngineOptions(), device="cpu", batch_window_s=0.5,
            encoder_batch_size=8, encoder_batch_seconds=2.5, max_tokens=4,
        )  # fmt: skip  # two 1 s clips a pass
        real = model.pipeline.encoder
        model.pipeline.encoder = Spy()  # type: ignore[assignment]
        try:
            clips = [noise(1.0, seed=i) for i in range(4)]
            return await asyncio.gather(
                *(model.transcribe(c, PromptOptions(), DecodeOptions()) for c in clips)
            )
        finally:
            await model.close()

    results = asyncio.run(scenario())
    assert passes == [2, 2]
    assert len(results) == 4 and all(r.text for r in results)


def test_encoder_graphs_without_a_gpu_say_so_and_serve(
    fake_engine, fun_asr_tiny: Path, caplog
) -> None:
    """Encoder graphs (the server's default) where CUDA graphs cannot run (here: the CPU):
    said once at start, and the encoder runs eagerly."""

    async def scenario():
        model = await AsyncModel.start(
            fun_asr_tiny, EngineOptions(), device="cpu", batch_window_s=0.0,
            encoder_batch_size=4, encoder_graphs=True, max_tokens=4,
        )  # fmt: skip
        try:
            return await model.transcribe(noise(1.0), PromptOptions(), DecodeOptions())
        finally:
            await model.close()

    with caplog.at_level("INFO", logger="asrctl.server"):
        result = asyncio.run(scenario())
    assert result.text
    assert any("does not replay CUDA graphs" in r.getMessage() for r in caplog.records)
