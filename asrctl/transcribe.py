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
import math
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from asrctl.adapters.base import Adapter, AudioEncoder, PromptOptions
from asrctl.adapters.registry import load_adapter
from asrctl.engine import (
    Decoding,
    Engine,
    EngineOptions,
    Generation,
    TextEmbedder,
    cuda_available,
)
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
ENCODER_DTYPES = ("float32", "bfloat16")  # audio encoder precisions with parity tests
GPU_BATCH_SIZE = 1024  # the CLI's --batch-size with a GPU (BENCHMARKS.md, round 4)
FLUSH_SECONDS = 1.0  # most time finished results wait before they are yielded
FIRST_BATCH = 64  # items in the first loaded batch; each next one doubles up to batch_size
HANDOFF_DEPTH = 8  # encoded sub-batches the producer may hold ready ahead of submission
TOO_LONG_HINT = "raise --max-model-len or use --vad"


@dataclass(frozen=True)
class TranscribeOptions:
    """What to transcribe and how.

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
        max_tokens: cap on generated tokens per utterance (None: 512).
        ignore_eos: generate exactly max_tokens (benchmarks only).
        tokens_per_second: benchmarks only: generate ceil(this × audio seconds) tokens
            per utterance, ignoring EOS, so every engine compared does the same work.
        repetition_penalty: penalty on already generated tokens (> 0; 1.0 = none;
            None: the family's default, e.g. 3.0 for FireRedASR-LLM).
        word_timestamps: time each word where the model can (Fun-ASR-Nano with its CTC
            head); ignored for models that cannot.
    """

    language: str | None = None
    hotwords: tuple[str, ...] = ()
    itn: bool = True
    batch_size: int = 64
    encoder_batch_size: int = 256
    encoder_batch_seconds: float | None = 960.0
    max_in_flight: int = 1024
    max_tokens: int | None = None
    ignore_eos: bool = False
    tokens_per_second: float | None = None
    repetition_penalty: float | None = None
    word_timestamps: bool = True

    def __post_init__(self) -> None:
        if min(self.batch_size, self.encoder_batch_size, self.max_in_flight) < 1:
            raise OptionsError("batch sizes and --max-in-flight must be at least 1")
        if self.encoder_batch_seconds is not None and not self.encoder_batch_seconds > 0:
            raise OptionsError("--encoder-batch-seconds must be greater than 0")
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
class _Encoded:
    """An utterance encoded and its prompt built, ready to submit."""

    item: AudioItem
    seconds: float
    prompt: torch.Tensor  # (seq, hidden)
    n_audio: int
    encode_s: float  # wall time of its encoder sub-batch
    timing: object | None = None  # the encoder's word-alignment data


@dataclass(frozen=True)
class _Handoff:
    """What the producer thread passes on: failures and encoded utterances."""

    failures: list[Failure] = field(default_factory=list)
    encoded: list[_Encoded] = field(default_factory=list)


_END = object()  # the producer has nothing more


@dataclass(frozen=True)
class _Pending:
    """An utterance submitted to the engine."""

    key: str
    duration: float
    encode_s: float  # wall time of its encoder sub-batch
    submitted: float  # perf_counter at submission
    timing: object | None = None


def resolve_encoder_dtype(name: str) -> torch.dtype:
    """The torch dtype of an ``--encoder-dtype`` name: float32 (the references'
    precision) or bfloat16 (faster on a GPU; every family's embeddings stay within 2 %
    relative error of float32, tests/precision.py)."""
    if name not in ENCODER_DTYPES:
        raise OptionsError(f"unknown --encoder-dtype {name!r}: use {' or '.join(ENCODER_DTYPES)}")
    import torch

    return getattr(torch, name)


def default_device() -> str:
    return "cuda" if cuda_available() else "cpu"


def default_batch_size() -> int:
    """``batch_size`` when none is given: large on a GPU, where length sorting and encoder
    batching within a batch pay off, small on a CPU."""
    return GPU_BATCH_SIZE if cuda_available() else TranscribeOptions.batch_size


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
        dtype = resolve_encoder_dtype(encoder_dtype)
        self.adapter: Adapter = load_adapter(model_dir)
        self.prepared: PreparedModel = export_llm(self.adapter, cache_dir=cache_dir)
        self.device = device or default_device()
        # vLLM first, then the encoder: its CUDA memory is then allocated beside vLLM's
        # KV cache, not counted against it (vLLM sizes the cache from free memory).
        self.engine = Engine(self.prepared.llm_dir, engine_options or EngineOptions())
        try:
            self.encoder = self.adapter.audio_encoder(self.device, dtype)
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
        """Yield finished results (completion order) as they come; see the module docstring."""
        options = options or TranscribeOptions()
        self.adapter.prompt(options.prompt)  # fail fast on unsupported options
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
        try:
            while more or in_flight:
                if more and len(in_flight) < options.max_in_flight:
                    wait = not in_flight
                    more = self._take(handoff, producer, options, in_flight, ready, wait=wait)
                if in_flight:
                    ready += self._collect(in_flight, wait_below=len(in_flight) + 1)
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
            for e in got.encoded:
                too_long = self._too_long(e.item, e.seconds, len(e.prompt))  # safety net
                if too_long is not None:
                    ready.append(too_long)
                    continue
                room = self.engine.max_model_len - len(e.prompt)
                decoding = self._decoding(options, e.n_audio, e.seconds, room)
                request_id = self.engine.submit(e.prompt, decoding)
                in_flight[request_id] = _Pending(
                    e.item.key, round(e.seconds, 3), e.encode_s, time.perf_counter(), e.timing
                )
        return True

    def _produce(
        self,
        items: Iterable[AudioItem],
        options: TranscribeOptions,
        handoff: queue.Queue,
        stop: threading.Event,
    ) -> None:
        """Producer thread: load, check, encode and hand off (see the module docstring)."""
        import torch

        def put(obj: object) -> bool:
            while not stop.is_set():
                try:
                    handoff.put(obj, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            timing = options.word_timestamps and self.encoder.word_timing
            budget = self._budget(options.encoder_batch_seconds)
            with ThreadPoolExecutor(LOADER_THREADS) as pool, torch.inference_mode():
                for batch in _prefetched(pool, self._load, _chunks(items, options.batch_size)):
                    loaded, failures = self._fits(batch, options.prompt)
                    if failures and not put(_Handoff(failures=failures)):
                        return
                    lengths = [len(x.audio) for x in loaded]
                    for idx in length_batches(lengths, options.encoder_batch_size, budget):
                        sub = [loaded[i] for i in idx]
                        if not put(_Handoff(encoded=self._encode_sub(sub, options, timing))):
                            return
        except BaseException as e:
            put(e)
            return
        put(_END)

    def _encode_sub(
        self, sub: list[_Loaded], options: TranscribeOptions, timing: bool
    ) -> list[_Encoded]:
        """Encode one sub-batch and build its prompts."""
        t0 = time.perf_counter()
        embeds, frames = self.encoder.encode([_tensor(x.audio) for x in sub], timing=timing)
        seconds = [len(x.audio) / self.sample_rate for x in sub]
        texts = [self.adapter.prompt_for_audio(options.prompt, s) for s in seconds]
        # one concatenation where the encoder ran, one host copy (and wait) per sub-batch
        prompts = self.engine.embed_text.splice_many(texts, embeds)
        encode_s = time.perf_counter() - t0
        timed = frames if frames is not None else [None] * len(sub)
        return [
            _Encoded(x.item, s, prompt, len(emb), encode_s, frame)
            for x, s, prompt, emb, frame in zip(sub, seconds, prompts, embeds, timed, strict=True)
        ]

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

    def _too_long(self, item: AudioItem, seconds: float, positions: int) -> Failure | None:
        """A failure for ``item`` if a prompt of ``positions`` leaves no room to generate."""
        limit = self.engine.max_model_len
        if positions < limit:
            return None
        return Failure(
            item.key, too_long_message(item.key, positions, limit, seconds, TOO_LONG_HINT)
        )

    def _fits(
        self, batch: list[_Loaded | Failure], options: PromptOptions
    ) -> tuple[list[_Loaded], list[Failure]]:
        """The batch's items whose prompts fit max_model_len, by length alone, and the
        failures (load failures and items too long): no audio is encoded in vain."""
        loaded: list[_Loaded] = []
        failures: list[Failure] = []
        for x in batch:
            if isinstance(x, Failure):
                failures.append(x)
                continue
            seconds = len(x.audio) / self.sample_rate
            positions = self.prompt_positions(len(x.audio), options)
            too_long = self._too_long(x.item, seconds, positions)
            if too_long is None:
                loaded.append(x)
            else:
                failures.append(too_long)
        return loaded, failures

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
            finished = [(in_flight.pop(rid), gen) for rid, gen in self.engine.poll()]
            done += self._finish(finished)
            if len(in_flight) < wait_below or not in_flight:
                return done

    def _finish(self, finished: list[tuple[_Pending, Generation]]) -> list[Transcript]:
        """Transcripts of the generations of one engine step, their words aligned together."""
        out: list[Transcript] = []
        for p, gen in finished:
            timing = {
                "batch_encode_s": round(p.encode_s, 4),
                "decode_s": round(time.perf_counter() - p.submitted, 4),
            }
            text, segments = self.adapter.parse_output(gen.text)
            text, truncated = truncate_loops(text)
            out.append(
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
        timed = [i for i, (p, _) in enumerate(finished) if p.timing is not None]
        if timed:
            texts = [out[i].text for i in timed]
            words = self.encoder.word_times(texts, [finished[i][0].timing for i in timed])
            for i, w in zip(timed, words, strict=True):
                out[i] = replace(out[i], words=tuple(w))
        return out

    def encode(
        self, waves: Sequence[np.ndarray], batch_size: int, batch_seconds: float | None = None
    ) -> list[torch.Tensor]:
        """Audio embeddings per waveform, encoded in length-sorted sub-batches."""
        budget = self._budget(batch_seconds)
        return encode_sorted(self.encoder, waves, batch_size, budget=budget)[0]

    def _budget(self, seconds: float | None) -> int | None:
        """``encoder_batch_seconds`` in samples."""
        return None if seconds is None else int(seconds * self.sample_rate)

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


def _tensor(audio: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(audio)


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
    encoder: AudioEncoder,
    waves: Sequence[np.ndarray],
    batch_size: int,
    *,
    timing: bool = False,
    budget: int | None = None,
) -> tuple[list[torch.Tensor], list[object] | None]:
    """Encode waveforms in :func:`length_batches` (shortest first); input order kept.
    Returns the embeddings and, with ``timing`` where the encoder can time words, each
    utterance's word-alignment data (else None)."""
    import torch

    out: list[torch.Tensor] = [torch.empty(0)] * len(waves)
    frames: list[object] | None = [None] * len(waves) if timing else None
    lengths = [len(w) for w in waves]
    with torch.inference_mode():
        for idx in length_batches(lengths, batch_size, budget, longest_first=False):
            embeds, timed = encoder.encode([torch.from_numpy(waves[i]) for i in idx], timing=timing)
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
