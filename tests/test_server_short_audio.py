"""issue 18 #5 on the server: a clip under 25 ms alone in its encoder pass was a 500.
``AsyncModel`` with the tiny Fun-ASR-Nano fixture's real encoder and a stand-in for vLLM."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from asrctl import engine as engine_module
from asrctl.adapters.base import PromptOptions
from asrctl.engine import EngineOptions
from asrctl.server.engine import AsyncModel, DecodeOptions

SR = 16000


class FakeAsyncLLM:
    """Answers every request with ``ok``; records the prompt lengths."""

    def __init__(self) -> None:
        self.model_config = SimpleNamespace(max_model_len=4096)
        self.prompt_lengths: list[int] = []
        self.ids = [1]  # the answer's token ids (the text is decoded from them)

    async def generate(self, request, params, request_id):
        self.prompt_lengths.append(len(request["prompt_embeds"]))
        done = SimpleNamespace(text="ok", token_ids=self.ids, finish_reason="stop")
        yield SimpleNamespace(finished=True, outputs=[done])

    def shutdown(self) -> None:
        pass


def test_clips_shorter_than_a_frame_alone_in_their_pass(
    fun_asr_tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("vllm")  # AsyncModel.stream builds vLLM's SamplingParams
    engine = FakeAsyncLLM()
    monkeypatch.setattr(engine_module, "start_vllm", lambda *a, **k: engine)

    async def scenario() -> tuple[list[str], list[int]]:
        model = await AsyncModel.start(
            fun_asr_tiny, EngineOptions(), device="cpu", batch_window_s=0.0,
            encoder_batch_size=4, max_tokens=8,
        )  # fmt: skip
        engine.ids = model.engine.embed_text.tokenizer.encode("ok", add_special_tokens=False).ids
        try:
            texts = []
            for samples in (1, 160, 399):  # 0.06 ms to 25 ms, one request at a time
                audio = np.full(samples, 0.01, dtype=np.float32)
                result = await model.transcribe(audio, PromptOptions(), DecodeOptions())
                texts.append(result.text)
            expected = model.pipeline.prompt_positions(400, PromptOptions())
        finally:
            await model.close()
        return texts, [expected]

    texts, (expected,) = asyncio.run(scenario())
    assert texts == ["ok", "ok", "ok"]
    assert engine.prompt_lengths == [expected] * 3  # one audio position each, as counted
