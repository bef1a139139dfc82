"""Batch transcription: audio items in, transcripts out, through one adapter and one engine.

Two threads share the work. A producer thread loads ``batch_size`` items at a time (a pool
reads the next batch meanwhile; the first batches are smaller, 64 items and doubling, so
work starts while the rest loads), drops those whose prompt cannot fit the engine's
``max_model_len`` (counted from the audio's length by the adapter's ``audio_positions``,
before encoding), sorts the rest by length and encodes them **longest first** in
sub-batches of at most ``encoder_batch_size`` utterances and ``encoder_batch_seconds`` of
padded audio (short utterances share larger passes at the same memory). Each sub-batch's
prompts (text ⊕ audio ⊕ text embeddings) are handed over as soon as it is encoded. The
calling thread submits them to vLLM and steps the engine, so decoding starts with the
first sub-batch and goes on while the encoder works on the next ones (vLLM's engine core
runs in its own process; while the calling thread waits on it, the producer has the
interpreter). At most ``max_in_flight`` utterances are submitted and unfinished at any
time. Results are yielded in completion order, in lists of up to ``batch_size`` or every
``FLUSH_SECONDS``. Inputs that fail to load or do not fit are returned as ``Failure``
objects; the rest go on.

Word timestamps: when the encoder can time words (``AudioEncoder.word_timing``, e.g.
Fun-ASR-Nano's CTC head) and ``word_timestamps`` is on, the encoder also returns compact
alignment data per utterance, kept until its text is decoded; the texts finished in one
engine step are then aligned in one batch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from asrctl.adapters.base import PromptOptions
from asrctl.engine import Engine, EngineOptions, Generation, cuda_available
from asrctl.errors import AsrctlError, OptionsError
from asrctl.inputs import AudioItem
from asrctl.models.encoder import AudioEncoder
from asrctl.pipeline import (
    DEFAULT_MAX_TOKENS,
    ENCODER_BATCH_SECONDS,
    DecodeOptions,
    Encoded,
    Pipeline,
    default_device,
    resolve_encoder_dtype,
)
from asrctl.results import Failure, Transcript

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger("asrctl")


class EncoderPass(Protocol):
    """One audio-encoder pass: embeddings and, with ``timing``, word-alignment data."""

    def __call__(
        self, waves: Sequence[torch.Tensor], *, timing: bool = False
    ) -> tuple[list[torch.Tensor], list[object] | None]: ...


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "TranscribeOptions",
    "Transcriber",
    "default_batch_size",
    "default_device",
    "resolve_encoder_dtype",
]

LOADER_THREADS = 4
GPU_BATCH_SIZE = 1024  # the CLI's --batch-size with a GPU (BENCHMARKS.md, round 4)
FLUSH_SECONDS = 1.0  # most time finished results wait before they are yielded
FIRST_BATCH = 64  # items in the first loaded batch; each next one doubles up to batch_size
HANDOFF_DEPTH = 8  # encoded sub-batches the producer may hold ready ahead of submission
TOO_LONG_HINT = "raise --max-model-len or use --vad"


@dataclass(frozen=True)
class TranscribeOptions:
    """What to transcribe and how (batch transcription).

    Attributes:
        language: language code (family-specific; None or "auto" lets the model decide).
        hotwords: words to bias recognition towards, where the family supports it.
        itn: inverse text normalisation where the family can switch it off.
        batch_size: utterances loaded and encoded together; results are yielded after each.
        encoder_batch_size: most utterances per audio-encoder forward pass.
        encoder_batch_seconds: most padded audio per encoder pass (utterances × the
            longest of them), which bounds the encoder's memory; None: no bound. A longer
            utterance is encoded alone.
        max_in_flight: most utterances submitted to vLLM and not yet finished.
        max_tokens, temperature, top_p, top_k, seed, repetition_penalty,
        frequency_penalty, presence_penalty, ignore_eos, tokens_per_second,
        word_timestamps, raw_text: how text is generated and returned, as in
            :class:`asrctl.pipeline.DecodeOptions` (word timestamps on by default here).
    """

    language: str | None = None
    hotwords: tuple[str, ...] = ()
    itn: bool = True
    batch_size: int = 64
    encoder_batch_size: int = 256
    encoder_batch_seconds: float | None = ENCODER_BATCH_SECONDS
    max_in_flight: int = 1024
    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False
    tokens_per_second: float | None = None
    word_timestamps: bool = True
    raw_text: bool = False

    def __post_init__(self) -> None:
        if min(self.batch_size, self.encoder_batch_size, self.max_in_flight) < 1:
            raise OptionsError("batch sizes and --max-in-flight must be at least 1")
        if self.encoder_batch_seconds is not None and not self.encoder_batch_seconds > 0:
            raise OptionsError("--encoder-batch-seconds must be greater than 0")
        try:
            self.decode  # noqa: B018  (validates the decoding fields)
        except OptionsError as e:
            raise OptionsError(f"--{str(e).replace('_', '-')}") from None

    @property
    def prompt(self) -> PromptOptions:
        return PromptOptions(language=self.language, hotwords=self.hotwords, itn=self.itn)

    @property
    def decode(self) -> DecodeOptions:
        """The decoding fields, as the life cycle takes them (same names, same meaning)."""
        return DecodeOptions(**{f.name: getattr(self, f.name) for f in _DECODE_FIELDS})


_DECODE_FIELDS = tuple(f for f in fields(DecodeOptions) if f.name != "logprobs")


@dataclass(frozen=True)
class _Loaded:
    item: AudioItem
    audio: np.ndarray


@dataclass(frozen=True)
class _Handoff:
    """What the producer thread passes on: failures and encoded utterances."""

    failures: list[Failure] = field(default_factory=list)
    encoded: list[tuple[AudioItem, Encoded]] = field(default_factory=list)


_END = object()  # the producer has nothing more


@dataclass(frozen=True)
class _Pending:
    """An utterance submitted to the engine."""

    key: str
    encoded: Encoded
    submitted: float  # perf_counter at submission


def default_batch_size() -> int:
    """``batch_size`` when none is given: large on a GPU, where length sorting and encoder
    batching within a batch pay off, small on a CPU."""
    return GPU_BATCH_SIZE if cuda_available() else TranscribeOptions.batch_size


class Transcriber:
    """Batch transcription over a :class:`~asrctl.pipeline.Pipeline` on vLLM's
    ``LLMEngine`` (see the module docstring)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        engine_options: EngineOptions | None = None,
        device: str | None = None,
        cache_dir: Path | None = None,
        encoder_dtype: str = "auto",
    ) -> None:
        self.pipeline = Pipeline(
            model_dir,
            engine_options=engine_options,
            device=device,
            cache_dir=cache_dir,
            encoder_dtype=encoder_dtype,
        )
        self.adapter = self.pipeline.adapter
        self.prepared = self.pipeline.prepared
        self.device = self.pipeline.device
        assert isinstance(self.pipeline.engine, Engine)
        self.engine: Engine = self.pipeline.engine

    @property
    def encoder(self) -> AudioEncoder:
        return self.pipeline.encoder

    @encoder.setter
    def encoder(self, encoder: AudioEncoder) -> None:  # benchmarks swap the precision
        self.pipeline.encoder = encoder

    def close(self) -> None:
        """Stop the engine (its worker processes)."""
        self.pipeline.close()

    def __enter__(self) -> Transcriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sample_rate(self) -> int:
        return self.pipeline.sample_rate

    def transcribe(
        self, items: Iterable[AudioItem], options: TranscribeOptions | None = None
    ) -> Iterator[list[Transcript | Failure]]:
        """Yield finished results (completion order) as they come; see the module docstring."""
        options = options or TranscribeOptions()
        self.pipeline.check_prompt(options.prompt)  # fail fast on unsupported options
        handoff: queue.Queue = queue.Queue(HANDOFF_DEPTH)
        stop = threading.Event()
        producer = threading.Thread(
            target=self._produce, args=(items, options, handoff, stop), daemon=True
        )
        producer.start()
        in_flight: dict[str, _Pending] = {}
        ready: list[Transcript | Failure] = []
        flushed = time.perf_counter()
        more = True
        decode = options.decode
        try:
            while more or in_flight:
                if more and len(in_flight) < options.max_in_flight:
                    wait = not in_flight
                    more = self._take(handoff, producer, options, in_flight, ready, wait=wait)
                if in_flight:
                    ready += self._collect(in_flight, decode, wait_below=len(in_flight) + 1)
                idle = not (more or in_flight)
                if ready and (
                    idle
                    or len(ready) >= options.batch_size
                    or time.perf_counter() - flushed >= FLUSH_SECONDS
                ):
                    yield ready
                    ready, flushed = [], time.perf_counter()
        finally:
            stop.set()
            while producer.is_alive():  # unblock a producer waiting to hand off
                with contextlib.suppress(queue.Empty):
                    handoff.get(timeout=0.05)
            producer.join()

    def _take(
        self,
        handoff: queue.Queue,
        producer: threading.Thread,
        options: TranscribeOptions,
        in_flight: dict[str, _Pending],
        ready: list[Transcript | Failure],
        *,
        wait: bool,
    ) -> bool:
        """Submit what the producer has ready (waiting for it if ``wait``), up to
        ``max_in_flight``; False once the producer is done."""
        decode = options.decode
        while len(in_flight) < options.max_in_flight:
            try:
                got = handoff.get(block=wait, timeout=1.0 if wait else None)
            except queue.Empty:
                if wait and not producer.is_alive() and handoff.empty():
                    raise RuntimeError("the audio producer thread stopped unexpectedly") from None
                if wait:
                    continue
                return True
            wait = False
            if got is _END:
                return False
            if isinstance(got, BaseException):
                raise got
            ready += got.failures
            for item, e in got.encoded:
                try:
                    decoding = self.pipeline.decoding(decode, e)
                except OptionsError as err:  # safety net: prompt fit is checked before
                    ready.append(Failure(item.key, f"{item.key}: {err}"))
                    continue
                request_id = self.engine.submit(e.prompt, decoding)
                in_flight[request_id] = _Pending(item.key, e, time.perf_counter())
        return True

    def _produce(
        self,
        items: Iterable[AudioItem],
        options: TranscribeOptions,
        handoff: queue.Queue,
        stop: threading.Event,
    ) -> None:
        """Producer thread: load, check, encode and hand off (see the module docstring)."""

        def put(obj: object) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(obj, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            timing = options.word_timestamps
            budget = self.pipeline.encoder_budget(options.encoder_batch_seconds)
            with ThreadPoolExecutor(LOADER_THREADS) as pool:
                for batch in _prefetched(pool, self._load, _chunks(items, options.batch_size)):
                    loaded, failures = self._fits(batch, options.prompt)
                    if failures and not put(_Handoff(failures=failures)):
                        return
                    lengths = [len(x.audio) for x in loaded]
                    for idx in length_batches(lengths, options.encoder_batch_size, budget):
                        sub = [loaded[i] for i in idx]
                        encoded = self.pipeline.encode(
                            [x.audio for x in sub], [options.prompt] * len(sub), timing=timing
                        )
                        pairs = [(x.item, e) for x, e in zip(sub, encoded, strict=True)]
                        if not put(_Handoff(encoded=pairs)):
                            return
        except BaseException as e:
            put(e)
            return
        put(_END)

    def _load(self, item: AudioItem) -> _Loaded | Failure:
        try:
            return _Loaded(item, item.load(self.sample_rate))
        except AsrctlError as e:
            return Failure(item.key, str(e))

    def _fits(
        self, batch: list[_Loaded | Failure], options: PromptOptions
    ) -> tuple[list[_Loaded], list[Failure]]:
        """The batch's items that fit one pass and ``max_model_len``, by length alone, and
        the failures (load failures and items too long): no audio is encoded in vain."""
        loaded: list[_Loaded] = []
        failures: list[Failure] = []
        for x in batch:
            if isinstance(x, Failure):
                failures.append(x)
                continue
            why = self.pipeline.unfit(
                x.item.key, len(x.audio), options, hint=TOO_LONG_HINT, window=True
            )
            if why is None:
                loaded.append(x)
            else:
                failures.append(Failure(x.item.key, why))
        return loaded, failures

    def _collect(
        self, in_flight: dict[str, _Pending], decode: DecodeOptions, *, wait_below: int
    ) -> list[Transcript]:
        """Poll the engine once, and on until fewer than ``wait_below`` are in flight."""
        done: list[Transcript] = []
        while True:
            finished = [(in_flight.pop(rid), gen) for rid, gen in self.engine.poll()]
            if finished:
                done += self._finish(finished, decode)
            if len(in_flight) < wait_below or not in_flight:
                return done

    def _finish(
        self, finished: list[tuple[_Pending, Generation]], decode: DecodeOptions
    ) -> list[Transcript]:
        now = time.perf_counter()
        timing = [
            {
                "batch_encode_s": round(p.encoded.encode_s, 4),
                "decode_s": round(now - p.submitted, 4),
            }
            for p, _ in finished
        ]
        done = [(p.key, p.encoded, gen) for p, gen in finished]
        return self.pipeline.finish(done, decode, timing)

    def encode(
        self, waves: Sequence[np.ndarray], batch_size: int, batch_seconds: float | None = None
    ) -> list[torch.Tensor]:
        """Audio embeddings per waveform, encoded in length-sorted sub-batches."""
        budget = self.pipeline.encoder_budget(batch_seconds)
        return encode_sorted(self.pipeline.encoder_pass, waves, batch_size, budget=budget)[0]

    def prompt_positions(self, num_samples: int, options: PromptOptions) -> int:
        """Positions the prompt of ``num_samples`` samples takes, without encoding them."""
        return self.pipeline.prompt_positions(num_samples, options)


def length_batches(
    lengths: Sequence[int], size: int, budget: int | None = None, *, longest_first: bool = True
) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length (longest first, or shortest) and cut into
    sub-batches of similar lengths, so little is padding: each holds at most ``size``
    items and, given ``budget``, at most ``budget`` padded samples (items × the longest
    of them). An item longer than ``budget`` is a sub-batch of its own."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=longest_first)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current:
            # sorted: the widest is the sub-batch's first item or the new one
            padded = (len(current) + 1) * max(lengths[current[0]], lengths[i])
            if len(current) == size or (budget is not None and padded > budget):
                batches.append(current)
                current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def encode_sorted(
    encode: EncoderPass,
    waves: Sequence[np.ndarray],
    batch_size: int,
    *,
    timing: bool = False,
    budget: int | None = None,
) -> tuple[list[torch.Tensor], list[object] | None]:
    """Encode waveforms in :func:`length_batches` (shortest first), one ``encode`` call
    (:meth:`Pipeline.encoder_pass`, or an encoder's own ``encode``) each; input order kept.
    Returns the embeddings and, with ``timing`` where the encoder can time words, each
    utterance's word-alignment data (else None)."""
    import torch

    out: list[torch.Tensor] = [torch.empty(0)] * len(waves)
    frames: list[object] | None = [None] * len(waves) if timing else None
    lengths = [len(w) for w in waves]
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_size, budget, longest_first=False):
            embeds, timed = encode([torch.from_numpy(waves[i]) for i in idx], timing=timing)
            for k, i in enumerate(idx):
                out[i] = embeds[k]
                if frames is not None:
                    frames[i] = timed[k] if timed is not None else None
    if frames is not None and any(f is None for f in frames):
        frames = None
    return out, frames


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


def _chunks(
    items: Iterable[AudioItem], size: int, first: int = FIRST_BATCH
) -> Iterator[list[AudioItem]]:
    """Batches of ``size`` items; the first ones smaller (``first``, then doubling), so the
    encoder and the LLM start on them while the pool loads the rest."""
    batch: list[AudioItem] = []
    limit = min(first, size)
    for item in items:
        batch.append(item)
        if len(batch) == limit:
            yield batch
            batch, limit = [], min(2 * limit, size)
    if batch:
        yield batch
