"""What every route shares: the model, the options, the limits, the metrics."""

from __future__ import annotations

import contextlib
import hmac
import os
import time
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from asrctl import languages
from asrctl.adapters.base import PromptOptions
from asrctl.errors import EngineError, OptionsError
from asrctl.pipeline import DecodeOptions
from asrctl.results import Transcript
from asrctl.server.batching import BatcherClosed
from asrctl.server.engine import AsyncModel, Progress
from asrctl.server.errors import ApiError
from asrctl.server.metrics import Metrics
from asrctl.server.options import ServerOptions
from asrctl.server.uploads import AudioLimits

DECODE_THREADS = 4  # uploads decoded at once (soundfile / PyAV release the GIL)
LONG_AUDIO_SECONDS = 3600.0  # /asr (and --vad) split long audio by VAD up to this


@dataclass
class ServerState:
    """The one model this server runs and everything the routes need around it."""

    model: AsyncModel
    options: ServerOptions
    names: tuple[str, ...]  # served model names; the first is the default
    limits: AudioLimits
    long_limits: AudioLimits  # routes that split long audio by VAD by default (/asr)
    metrics: Metrics = field(default_factory=Metrics)
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(
            min(DECODE_THREADS, os.cpu_count() or 1), thread_name_prefix="asrctl-decode"
        )
    )
    created: int = field(default_factory=lambda: int(time.time()))
    closing: bool = False

    @classmethod
    def create(
        cls, model: AsyncModel, options: ServerOptions, model_dir: Path, metrics: Metrics
    ) -> ServerState:
        family = model.adapter.family
        model_max = family.max_audio_seconds
        caps = [c for c in (options.max_audio_seconds, model_max) if c is not None]
        if options.vad:  # long uploads are segmented: only --max-audio-seconds caps them
            caps = [options.max_audio_seconds or LONG_AUDIO_SECONDS]
        limits = AudioLimits(
            max_bytes=options.max_upload_bytes,
            max_seconds=min(caps) if caps else LONG_AUDIO_SECONDS,
            model_title=family.title,
            model_max_seconds=model_max,
        )
        long_limits = replace(limits, max_seconds=options.max_audio_seconds or LONG_AUDIO_SECONDS)
        names = options.served_model_names or (Path(model_dir).expanduser().resolve().name,)
        metrics.model_name = names[0]
        metrics.watch_queue(lambda: model.batcher.depth)
        return cls(
            model=model,
            options=options,
            names=names,
            limits=limits,
            long_limits=long_limits,
            metrics=metrics,
        )

    @property
    def title(self) -> str:
        return self.model.adapter.family.title

    def resolve_model(self, name: str | None) -> str:
        """The served name a request asked for (None: the default); 404 if unknown."""
        if name is None or not name.strip():
            return self.names[0]
        if name not in self.names:
            raise ApiError(
                404,
                f"The model `{name}` does not exist. This server serves: {', '.join(self.names)}",
                param="model",
                code="model_not_found",
            )
        return name

    def authorized(
        self, headers: Mapping[str, str], query: Mapping[str, str] | None = None
    ) -> bool:
        """Whether the request carries an accepted key (always, when no keys are set).

        The key comes as ``Authorization: Bearer KEY``; WebSocket clients that cannot set
        headers (browsers) may pass ``?api_key=KEY`` instead.
        """
        if not self.options.api_keys:
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            token = (query or {}).get("api_key", "")
        given = token.strip().encode()
        return any(hmac.compare_digest(given, k.encode()) for k in self.options.api_keys)

    def language(self, value: str | None) -> str | None:
        """A client's language (code or name: ``en``, ``English``, ``中文``) as the family
        takes it: None for auto, and for families that detect the language themselves
        (no language table: GLM-ASR, VibeVoice-ASR, FireRedASR-LLM), whose clients send a
        language anyway (``vllm bench serve`` always sends ``en``)."""
        code = languages.normalize(value)
        if not self.model.adapter.family.languages:
            return None
        return code

    def check_prompt(self, prompt: PromptOptions, param: str) -> None:
        try:
            self.model.check_prompt(prompt)
        except OptionsError as e:
            raise ApiError(400, str(e), param=param, code="unsupported_value") from None

    async def stream(
        self,
        endpoint: str,
        audio: np.ndarray,
        prompt: PromptOptions,
        decode: DecodeOptions,
        *,
        streaming: bool = True,
    ) -> AsyncIterator[Progress]:
        """The model's stream, with metrics and errors mapped to API errors (without
        ``streaming``: the result only)."""
        metrics = self.metrics
        start = time.perf_counter()
        first = True
        with _gauge(metrics.generating):
            try:
                outputs = self.model.stream(audio, prompt, decode, streaming=streaming)
                async for progress in outputs:
                    if first:
                        metrics.first_text.observe(time.perf_counter() - start)
                        first = False
                    if progress.result is not None:
                        metrics.audio_seconds.labels(endpoint).inc(progress.result.duration)
                    yield progress
            except OptionsError as e:
                raise ApiError(400, str(e), code="invalid_request") from e
            except EngineError as e:
                raise ApiError(500, str(e), code="engine_error") from e
            except BatcherClosed as e:
                raise ApiError(503, str(e), code="unavailable") from e

    async def transcribe(
        self,
        endpoint: str,
        audio: np.ndarray,
        prompt: PromptOptions,
        decode: DecodeOptions,
        *,
        vad: bool = False,
    ) -> Transcript:
        """One upload's transcript; audio longer than the model's window is split by VAD
        with ``serve --vad``, or when the route asks (``vad``: FunASR's /asr)."""
        if self.needs_segmenting(audio, vad=vad):
            from asrctl.server.long_audio import transcribe_segmented

            return await transcribe_segmented(self, endpoint, audio, prompt, decode)
        return await self.transcribe_one(endpoint, audio, prompt, decode)

    def needs_segmenting(self, audio: np.ndarray, *, vad: bool = False) -> bool:
        """With ``--vad`` (or ``vad``): whether the audio is longer than the model takes
        in one pass."""
        limit = self.model.adapter.family.max_audio_seconds
        seconds = len(audio) / self.model.sample_rate
        return (vad or self.options.vad) and limit is not None and seconds > limit

    async def transcribe_one(
        self, endpoint: str, audio: np.ndarray, prompt: PromptOptions, decode: DecodeOptions
    ) -> Transcript:
        async for progress in self.stream(endpoint, audio, prompt, decode, streaming=False):
            if progress.result is not None:
                return progress.result
        raise ApiError(500, "the engine returned no result", code="engine_error")

    async def close(self) -> None:
        self.closing = True
        await self.model.close()
        self.pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def _gauge(gauge):
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()
