"""Batch transcription: audio items in, transcripts out, through one adapter and one engine.

A thread pool loads the next batch of ``batch_size`` items while the current one is
encoded. Within a batch, utterances are sorted by length and encoded in sub-batches of
``encoder_batch_size`` (little padding); each prompt (text ⊕ audio ⊕ text embeddings) is
submitted to vLLM at once, whose engine core decodes in its own process while the next
batch is loaded and encoded. Finished results are yielded after every batch; at most
``max_in_flight`` utterances are submitted and unfinished at any time. Inputs that fail to
load, or whose prompt would not fit the engine's ``max_model_len`` (counted from the audio's
length by the adapter's ``audio_positions``, before encoding), are returned as ``Failure``
objects; the rest go on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asrctl.adapters.base import Adapter, AudioEncoder, PromptOptions
from asrctl.adapters.registry import load_adapter
from asrctl.engine import Decoding, Engine, EngineOptions, TextEmbedder, cuda_available
from asrctl.errors import AsrctlError, OptionsError
from asrctl.export import PreparedModel, export_llm
from asrctl.guard import truncate_loops
from asrctl.inputs import AudioItem
from asrctl.results import Failure, Transcript

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger("asrctl")

DEFAULT_MAX_TOKENS = 512  # the reference implementations' max_new_tokens
LOADER_THREADS = 4
TOO_LONG_HINT = "raise --max-model-len or use --vad"


@dataclass(frozen=True)
class TranscribeOptions:
    """What to transcribe and how.

    Attributes:
        language: language code (family-specific; None or "auto" lets the model decide).
        hotwords: words to bias recognition towards, where the family supports it.
        itn: inverse text normalisation where the family can switch it off.
        batch_size: utterances loaded and encoded together; results are yielded after each.
        encoder_batch_size: utterances per audio-encoder forward pass.
        max_in_flight: most utterances submitted to vLLM and not yet finished.
        max_tokens: cap on generated tokens per utterance (None: 512).
        ignore_eos: generate exactly max_tokens (benchmarks only).
        tokens_per_second: benchmarks only: generate ceil(this × audio seconds) tokens
            per utterance, ignoring EOS, so every engine compared does the same work.
        repetition_penalty: penalty on already generated tokens (> 0; 1.0 = none;
            None: the family's default, e.g. 3.0 for FireRedASR-LLM).
    """

    language: str | None = None
    hotwords: tuple[str, ...] = ()
    itn: bool = True
    batch_size: int = 64
    encoder_batch_size: int = 16
    max_in_flight: int = 1024
    max_tokens: int | None = None
    ignore_eos: bool = False
    tokens_per_second: float | None = None
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        if min(self.batch_size, self.encoder_batch_size, self.max_in_flight) < 1:
            raise OptionsError("batch sizes and --max-in-flight must be at least 1")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise OptionsError("--repetition-penalty must be greater than 0")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise OptionsError("--max-tokens must be at least 1")

    @property
    def prompt(self) -> PromptOptions:
        return PromptOptions(language=self.language, hotwords=self.hotwords, itn=self.itn)


@dataclass(frozen=True)
class _Loaded:
    item: AudioItem
    audio: np.ndarray


@dataclass(frozen=True)
class _Pending:
    """An utterance submitted to the engine."""

    key: str
    duration: float
    encode_s: float  # wall time of its batch's encoder stage
    submitted: float  # perf_counter at submission


def default_device() -> str:
    return "cuda" if cuda_available() else "cpu"


class Transcriber:
    """A model directory prepared, its encoder loaded and its LLM running in vLLM."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        engine_options: EngineOptions | None = None,
        device: str | None = None,
        cache_dir: Path | None = None,
        encoder_dtype: str = "float32",
    ) -> None:
        import torch

        self.adapter: Adapter = load_adapter(model_dir)
        self.prepared: PreparedModel = export_llm(self.adapter, cache_dir=cache_dir)
        self.device = device or default_device()
        # vLLM first, then the encoder: its CUDA memory is then allocated beside vLLM's
        # KV cache, not counted against it (vLLM sizes the cache from free memory).
        self.engine = Engine(self.prepared.llm_dir, engine_options or EngineOptions())
        try:
            self.encoder = self.adapter.audio_encoder(self.device, getattr(torch, encoder_dtype))
        except BaseException:
            self.engine.close()
            raise

    def close(self) -> None:
        """Stop the engine (its worker processes)."""
        self.engine.close()

    def __enter__(self) -> Transcriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sample_rate(self) -> int:
        return self.adapter.family.sample_rate

    def transcribe(
        self, items: Iterable[AudioItem], options: TranscribeOptions | None = None
    ) -> Iterator[list[Transcript | Failure]]:
        """Yield the results finished after each batch (completion order), then the rest."""
        options = options or TranscribeOptions()
        self.adapter.prompt(options.prompt)  # fail fast on unsupported options
        in_flight: dict[str, _Pending] = {}
        with ThreadPoolExecutor(LOADER_THREADS) as pool:
            for loaded in _prefetched(pool, self._load, _chunks(items, options.batch_size)):
                results = self._submit(loaded, options, in_flight)
                results += self._collect(in_flight, wait_below=options.max_in_flight)
                if results:
                    yield results
        while in_flight:
            yield self._collect(in_flight, wait_below=len(in_flight))

    def _load(self, item: AudioItem) -> _Loaded | Failure:
        try:
            audio = item.load(self.sample_rate)
        except AsrctlError as e:
            return Failure(item.key, str(e))
        limit = self.adapter.family.max_audio_seconds
        seconds = len(audio) / self.sample_rate
        if limit is not None and seconds > limit:
            return Failure(
                item.key,
                f"{item.key}: audio is {seconds:.1f} s; "
                f"{self.adapter.family.title} accepts at most {limit:.0f} s per pass "
                "(split long recordings first)",
            )
        return _Loaded(item, audio)

    def _too_long(self, x: _Loaded, positions: int) -> Failure | None:
        """A failure for ``x`` if a prompt of ``positions`` leaves no room to generate."""
        if positions < self.engine.max_model_len:
            return None
        seconds = len(x.audio) / self.sample_rate
        limit = self.engine.max_model_len
        return Failure(
            x.item.key, too_long_message(x.item.key, positions, limit, seconds, TOO_LONG_HINT)
        )

    def _fits(
        self, batch: list[_Loaded | Failure], options: PromptOptions
    ) -> tuple[list[_Loaded], list[Transcript | Failure]]:
        """The batch's items whose prompts fit max_model_len, by length alone, and the
        failures (load failures and items too long): no audio is encoded in vain."""
        loaded: list[_Loaded] = []
        failures: list[Transcript | Failure] = []
        for x in batch:
            if isinstance(x, Failure):
                failures.append(x)
                continue
            too_long = self._too_long(x, self.prompt_positions(len(x.audio), options))
            if too_long is None:
                loaded.append(x)
            else:
                failures.append(too_long)
        return loaded, failures

    def _submit(
        self,
        batch: list[_Loaded | Failure],
        options: TranscribeOptions,
        in_flight: dict[str, _Pending],
    ) -> list[Transcript | Failure]:
        """Encode a loaded batch and submit its prompts; returns the batch's failures."""
        loaded, failures = self._fits(batch, options.prompt)
        t0 = time.perf_counter()
        embeds = self.encode([x.audio for x in loaded], options.encoder_batch_size)
        encode_s = time.perf_counter() - t0
        for x, emb in zip(loaded, embeds, strict=True):
            prompt = self.build_prompt(emb, options.prompt, seconds=len(x.audio) / self.sample_rate)
            too_long = self._too_long(x, len(prompt))  # safety net: the formula was checked
            if too_long is not None:
                failures.append(too_long)
                continue
            room = self.engine.max_model_len - len(prompt)
            seconds = len(x.audio) / self.sample_rate
            request_id = self.engine.submit(
                prompt, self._decoding(options, len(emb), seconds, room)
            )
            in_flight[request_id] = _Pending(
                x.item.key, round(seconds, 3), encode_s, time.perf_counter()
            )
        return failures

    def _decoding(
        self, options: TranscribeOptions, n_audio: int, seconds: float, room: int
    ) -> Decoding:
        penalty = options.repetition_penalty
        if penalty is None:
            penalty = self.adapter.family.repetition_penalty
        if options.tokens_per_second is not None:
            fixed = math.ceil(options.tokens_per_second * seconds)
            return Decoding(
                max_tokens=max(1, min(fixed, room)), ignore_eos=True, repetition_penalty=penalty
            )
        default = self.adapter.max_new_tokens(n_audio) or DEFAULT_MAX_TOKENS
        return Decoding(
            max_tokens=min(options.max_tokens or default, room),
            ignore_eos=options.ignore_eos,
            repetition_penalty=penalty,
        )

    def _collect(self, in_flight: dict[str, _Pending], *, wait_below: int) -> list[Transcript]:
        """Poll the engine once, and on until fewer than ``wait_below`` are in flight."""
        done: list[Transcript] = []
        while True:
            for request_id, gen in self.engine.poll():
                p = in_flight.pop(request_id)
                timing = {
                    "batch_encode_s": round(p.encode_s, 4),
                    "decode_s": round(time.perf_counter() - p.submitted, 4),
                }
                text, segments = self.adapter.parse_output(gen.text)
                text, truncated = truncate_loops(text)
                done.append(
                    Transcript(
                        key=p.key,
                        text=text,
                        duration=p.duration,
                        token_ids=gen.token_ids,
                        finish_reason=gen.finish_reason,
                        timing=timing,
                        guard_truncated=truncated,
                        segments=tuple(segments) or None,
                    )
                )
            if len(in_flight) < wait_below or not in_flight:
                return done

    def encode(self, waves: Sequence[np.ndarray], batch_size: int) -> list[torch.Tensor]:
        """Audio embeddings per waveform, encoded in length-sorted sub-batches."""
        return encode_sorted(self.encoder, waves, batch_size)

    def prompt_positions(self, num_samples: int, options: PromptOptions) -> int:
        """Positions the prompt of ``num_samples`` samples takes, without encoding them."""
        return prompt_positions(self.adapter, self.engine.embed_text, options, num_samples)

    def build_prompt(
        self, audio: torch.Tensor, options: PromptOptions, *, seconds: float | None = None
    ) -> torch.Tensor:
        """``prefix text ⊕ audio ⊕ suffix text`` as one ``(seq, hidden)`` tensor."""
        prompt = self.adapter.prompt_for_audio(options, seconds)  # seconds: for VibeVoice
        return self.engine.embed_text.splice(prompt, audio)


def prompt_positions(
    adapter: Adapter, embed_text: TextEmbedder, options: PromptOptions, num_samples: int
) -> int:
    """Prompt positions (text ⊕ audio ⊕ text) for ``num_samples`` samples, from the
    adapter's length formula and the prompt's token counts: nothing is encoded."""
    prompt = adapter.prompt_for_audio(options, num_samples / adapter.family.sample_rate)
    return embed_text.positions(prompt, adapter.audio_positions(num_samples))


def too_long_message(
    what: str, positions: int, max_model_len: int, seconds: float, hint: str
) -> str:
    """Why a prompt cannot be decoded (it leaves no position to generate in) and the fix."""
    return (
        f"{what}: prompt of {positions} positions ({seconds:.1f} s of audio) exceeds "
        f"--max-model-len {max_model_len} (one position must be left to generate); {hint}"
    )


def encode_sorted(
    encoder: AudioEncoder, waves: Sequence[np.ndarray], batch_size: int
) -> list[torch.Tensor]:
    """Encode waveforms in length-sorted sub-batches (little padding); input order kept."""
    import torch

    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(waves)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            for i, emb in zip(idx, encoder([torch.from_numpy(waves[i]) for i in idx]), strict=True):
                out[i] = emb
    return out


def _prefetched(
    pool: ThreadPoolExecutor, load, batches: Iterator[list[AudioItem]]
) -> Iterator[list]:
    """Yield each batch loaded, while the pool already loads the next one."""
    pending: list[Future] | None = None
    for batch in batches:
        submitted = [pool.submit(load, item) for item in batch]
        if pending is not None:
            yield [f.result() for f in pending]
        pending = submitted
    if pending is not None:
        yield [f.result() for f in pending]


def _chunks(items: Iterable[AudioItem], size: int) -> Iterator[list[AudioItem]]:
    batch: list[AudioItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
