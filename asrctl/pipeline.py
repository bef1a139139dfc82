"""One request life cycle, shared by every entry point.

Batch transcription (:class:`asrctl.transcribe.Transcriber`), the server
(:class:`asrctl.server.engine.AsyncModel`), the library API and workers run a request
through the same steps, each defined here once:

1. **start**: the family detected from what is on disk, its LLM exported, vLLM started
   (``LLMEngine``, or ``AsyncLLM`` for asynchronous callers), the audio encoder loaded
   (:class:`Pipeline`);
2. **check**: options the family cannot honour (:meth:`Pipeline.check_prompt`), audio longer
   than one pass takes or whose prompt leaves no room in ``max_model_len``
   (:meth:`Pipeline.unfit`), before any audio is encoded;
3. **encode**: waveforms through the encoder, each spliced between its prompt's text
   embeddings (:meth:`Pipeline.encode`);
4. **decoding settings**: the token cap, penalties and sampling (:meth:`Pipeline.decoding`),
   then vLLM;
5. **finish**: the family's output parsing, the repetition guard and word alignment
   (:meth:`Pipeline.finish`);
6. **long audio**: VAD segments stitched into one result (:func:`asrctl.segment.stitch`).

Rules decided here, for every entry point:

* Token cap: the caller's ``max_tokens``, else the family's default for the audio's length
  (``Adapter.max_new_tokens``), else :data:`DEFAULT_MAX_TOKENS`; then at most the operator's
  cap (``serve --max-tokens``) and the room left in ``max_model_len``.
* Repetition penalty: the caller's, else the family's (3.0 for FireRedASR-LLM, else 1.0).
  Penalties count generated tokens only (see :func:`asrctl.engine.embeds_request`).
* Text: the decoded text; unless ``raw_text``, a trailing U+FFFD (a character cut by the
  token cap) is dropped, the family's parsing and clean-up applied (outer whitespace
  stripped; VibeVoice's JSON segments parsed) and the repetition guard cuts loops.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from asrctl.adapters.base import Adapter, PromptOptions
from asrctl.adapters.registry import load_adapter
from asrctl.engine import AsyncEngine, Decoding, Engine, EngineOptions, Generation, cuda_available
from asrctl.errors import EngineError, OptionsError
from asrctl.export import PreparedModel, export_llm
from asrctl.guard import truncate_loops
from asrctl.models.encoder import AudioEncoder
from asrctl.results import Transcript

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger("asrctl")

DEFAULT_MAX_TOKENS = 512  # the reference implementations' max_new_tokens
# audio encoder precisions: float32 (the references'), tf32 (float32 weights, TensorFloat-32
# matmuls on a GPU; float32 elsewhere), bfloat16 (weights and activations), and auto: tf32
# on a GPU, float32 on a CPU. On an H100, tf32 ran the Fun-ASR-Nano pipeline 1.43x faster
# than float32 (as fast as bfloat16) with embeddings 3.6e-4 from float32's (bfloat16: 9.6e-3)
# (benchmarks/results/2026-12-06-h100-fun-asr-nano-precision.json)
ENCODER_DTYPES = ("auto", "float32", "tf32", "bfloat16")
MAX_TEMPERATURE = 2.0


@dataclass(frozen=True)
class DecodeOptions:
    """How text is generated, for every entry point (batch, server, library).

    Attributes:
        max_tokens: cap on generated tokens (None: the family's default, else 512).
        temperature: 0 decodes greedily; above 0 samples (at most 2).
        top_p: nucleus sampling mass (1.0: off).
        top_k: sample among the k likeliest tokens (None: off).
        seed: sampling seed (only matters when temperature > 0).
        repetition_penalty: > 0; 1.0 = none; None: the family's default (3.0 for
            FireRedASR-LLM, as its reference decoder).
        frequency_penalty: OpenAI's, -2..2 (0: none).
        presence_penalty: OpenAI's, -2..2 (0: none).
        ignore_eos: generate exactly max_tokens (benchmarks only).
        tokens_per_second: benchmarks only: generate ceil(this × audio seconds) tokens,
            ignoring EOS, so every engine compared does the same work.
        logprobs: compute the average log-probability of the generated tokens.
        word_timestamps: time each word where the model can (Fun-ASR-Nano with its CTC
            head); ignored for models that cannot.
        raw_text: return the text exactly as decoded (no clean-up, no parsing, no
            repetition guard), for diffing against the original pipelines.
    """

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
    logprobs: bool = False
    word_timestamps: bool = False
    raw_text: bool = False

    def __post_init__(self) -> None:
        problem = _decode_problem(self)
        if problem is not None:
            raise OptionsError(problem)


def _decode_problem(o: DecodeOptions) -> str | None:
    checks = (
        (o.max_tokens is not None and o.max_tokens < 1, "max_tokens must be at least 1"),
        (
            not 0 <= o.temperature <= MAX_TEMPERATURE,
            f"temperature must be between 0 and {MAX_TEMPERATURE:g}",
        ),
        (not 0 < o.top_p <= 1, "top_p must be greater than 0 and at most 1"),
        (o.top_k is not None and o.top_k < 1, "top_k must be at least 1"),
        (
            o.repetition_penalty is not None and not o.repetition_penalty > 0,
            "repetition_penalty must be greater than 0",
        ),
        (not -2 <= o.frequency_penalty <= 2, "frequency_penalty must be between -2 and 2"),
        (not -2 <= o.presence_penalty <= 2, "presence_penalty must be between -2 and 2"),
        (
            o.tokens_per_second is not None and not o.tokens_per_second > 0,
            "tokens_per_second must be greater than 0",
        ),
    )
    return next((message for failed, message in checks if failed), None)


SAMPLING_FIELDS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
)


@dataclass(frozen=True)
class SamplingOverride:
    """Decoding settings pinned by the operator (``serve --sampling-override``): each one
    set beats whatever a request or caller asks for; None leaves a field to them."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    def __post_init__(self) -> None:
        self.apply(DecodeOptions())  # validates the values (OptionsError naming the field)

    @classmethod
    def parse(cls, text: str) -> SamplingOverride:
        """From a JSON object, or the path of a file holding one."""
        import json

        source = text
        if not text.lstrip().startswith("{"):
            try:
                source = Path(text).expanduser().read_text(encoding="utf-8")
            except OSError as e:
                raise OptionsError(
                    f"--sampling-override {text!r} is neither a JSON object nor a readable "
                    f"file: {e.strerror or e}"
                ) from None
        try:
            values = json.loads(source)
        except ValueError as e:
            raise OptionsError(f"--sampling-override is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise OptionsError("--sampling-override must be a JSON object")
        unknown = sorted(set(values) - set(SAMPLING_FIELDS))
        if unknown:
            raise OptionsError(
                f"--sampling-override: unknown field(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(SAMPLING_FIELDS)}"
            )
        try:
            return cls(**values)
        except TypeError as e:
            raise OptionsError(f"--sampling-override: {e}") from None

    def apply(self, options: DecodeOptions) -> DecodeOptions:
        pinned = {name: getattr(self, name) for name in SAMPLING_FIELDS}
        return replace(options, **{k: v for k, v in pinned.items() if v is not None})


@dataclass(frozen=True)
class Encoded:
    """One utterance encoded and its prompt built, ready for the engine."""

    prompt: torch.Tensor  # (seq, hidden) on the CPU: prefix text ⊕ audio ⊕ suffix text
    audio_tokens: int
    seconds: float
    encode_s: float  # wall time of its encoder sub-batch
    timing: object | None = None  # the encoder's word-alignment data, when asked for


@dataclass(frozen=True)
class Startup:
    """Where a pipeline's start-up time went (wall seconds)."""

    setup_s: float  # detect the family, check the folder, export the LLM (or reuse it)
    engine_s: float  # start vLLM: load weights, compile, capture CUDA graphs
    encoder_s: float  # load the audio encoder

    @property
    def total_s(self) -> float:
        return self.setup_s + self.engine_s + self.encoder_s

    def __str__(self) -> str:
        return (
            f"setup {self.setup_s:.1f} s, vLLM {self.engine_s:.1f} s, "
            f"encoder {self.encoder_s:.1f} s"
        )


def resolve_encoder_dtype(name: str) -> torch.dtype:
    """The torch dtype of an ``--encoder-dtype`` name: float32 (the references'
    precision), tf32 (float32 weights; matmuls in TensorFloat-32 on a GPU, see
    :func:`apply_encoder_precision`), bfloat16 (faster on a GPU; every family's embeddings
    stay within 2 % relative error of float32, tests/precision.py) or auto (float32
    weights either way)."""
    if name not in ENCODER_DTYPES:
        raise OptionsError(f"unknown --encoder-dtype {name!r}: use {', '.join(ENCODER_DTYPES)}")
    import torch

    return torch.float32 if name in ("tf32", "auto") else getattr(torch, name)


# Most padded audio (utterances x the longest, in seconds) in one audio-encoder pass, on
# every entry point: what bounds the encoder's GPU memory beside vLLM's.
ENCODER_BATCH_SECONDS = 960.0


def encoder_precision(name: str, device: str) -> str:
    """``auto`` made concrete for ``device``: tf32 on a GPU, float32 elsewhere."""
    resolve_encoder_dtype(name)
    if name != "auto":
        return name
    return "tf32" if device.startswith("cuda") else "float32"


def apply_encoder_precision(name: str, device: str = "cpu") -> torch.dtype:
    """Resolve ``--encoder-dtype`` for ``device`` and set this process's float32 matmul
    precision to match (TensorFloat-32 for ``tf32``, full float32 otherwise). vLLM's
    engine core runs in another process, or in this one only for a 16-bit LLM, whose
    matmuls this setting does not touch (:func:`asrctl.engine.engine_core_here`)."""
    import torch

    name = encoder_precision(name, device)
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    return resolve_encoder_dtype(name)


def default_device() -> str:
    return "cuda" if cuda_available() else "cpu"


class Pipeline:
    """A model directory ready to run: its adapter, exported LLM, engine and audio encoder.

    Args:
        model_dir: the model folder (any layout the registry detects).
        engine_options: passed to vLLM.
        asynchronous: start vLLM's ``AsyncLLM`` (create inside the event loop that uses it)
            instead of its ``LLMEngine``.
        device: where the audio encoder runs (default: cuda if present).
        cache_dir: where the LLM export goes when the model folder is read-only.
        encoder_dtype: ``auto`` (tf32 on a GPU, float32 on a CPU), ``float32``, ``tf32`` or
            ``bfloat16``.
        max_tokens_cap: the operator's cap on generated tokens (``serve --max-tokens``).
        sampling_override: decoding settings that beat every caller's (``serve
            --sampling-override``).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        engine_options: EngineOptions | None = None,
        asynchronous: bool = False,
        device: str | None = None,
        cache_dir: Path | None = None,
        encoder_dtype: str = "auto",
        max_tokens_cap: int | None = None,
        sampling_override: SamplingOverride | None = None,
    ) -> None:
        resolve_encoder_dtype(encoder_dtype)  # fails fast, naming the choices
        self.sampling_override = sampling_override or SamplingOverride()
        t0 = time.perf_counter()
        self.adapter: Adapter = load_adapter(model_dir)
        self.prepared: PreparedModel = export_llm(self.adapter, cache_dir=cache_dir)
        self.device = device or default_device()
        self.encoder_precision = encoder_precision(encoder_dtype, self.device)
        self.max_tokens_cap = max_tokens_cap
        self._halved = False  # an encoder pass ran out of memory (warned once)
        self._stream: torch.cuda.Stream | None = None  # the encoder's, on a GPU (encode)
        # vLLM first, then the encoder: its CUDA memory is then allocated beside vLLM's
        # KV cache, not counted against it (vLLM sizes the cache from free memory), and
        # vLLM can still fork its engine core (this process has not touched CUDA yet).
        llm_dir = self.prepared.llm_dir
        cls = AsyncEngine if asynchronous else Engine
        t1 = time.perf_counter()
        self.engine: Engine | AsyncEngine = cls(llm_dir, engine_options or EngineOptions())
        t2 = time.perf_counter()
        # After vLLM: a vLLM worker in this process (an in-process engine core) sets the
        # process's float32 matmul precision to its own default while it starts.
        dtype = apply_encoder_precision(self.encoder_precision)
        try:
            self.encoder: AudioEncoder = self.adapter.audio_encoder(self.device, dtype)
        except BaseException:
            self.engine.close()
            raise
        self.startup = Startup(
            setup_s=round(t1 - t0, 2),
            engine_s=round(t2 - t1, 2),
            encoder_s=round(time.perf_counter() - t2, 2),
        )

    @property
    def sample_rate(self) -> int:
        return self.adapter.family.sample_rate

    @property
    def title(self) -> str:
        return self.adapter.family.title

    def encoder_budget(self, seconds: float | None) -> int | None:
        """An encoder pass's limit of padded audio in samples: ``seconds``, at most the
        family's ``max_encoder_batch_seconds`` (None: no limit)."""
        cap = self.adapter.family.max_encoder_batch_seconds
        if cap is not None:
            seconds = cap if seconds is None else min(seconds, cap)
        return None if seconds is None else int(seconds * self.sample_rate)

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def close(self) -> None:
        """Stop vLLM's engine processes."""
        self.engine.close()

    # -- 2. check ------------------------------------------------------------------------

    def check_prompt(self, options: PromptOptions) -> None:
        """Raise OptionsError if the family cannot honour ``options`` (language, hotwords)."""
        self.adapter.prompt(options)

    def prompt_positions(self, num_samples: int, options: PromptOptions) -> int:
        """Positions the prompt for ``num_samples`` samples takes (text ⊕ audio ⊕ text),
        from the adapter's length formula and the prompt's token counts: nothing encoded."""
        prompt = self.adapter.prompt_for_audio(options, num_samples / self.sample_rate)
        return self.engine.embed_text.positions(prompt, self.adapter.audio_positions(num_samples))

    def unfit(
        self, what: str, num_samples: int, options: PromptOptions, *, hint: str, window: bool
    ) -> str | None:
        """Why audio of ``num_samples`` cannot be transcribed in one pass (None if it can):
        longer than the family's window (checked when ``window``), or a prompt that leaves
        no position to generate in ``max_model_len``."""
        seconds = num_samples / self.sample_rate
        limit = self.adapter.family.max_audio_seconds
        if window and limit is not None and seconds > limit:
            return (
                f"{what}: audio is {seconds:.1f} s; {self.title} accepts at most "
                f"{limit:.0f} s per pass (split long recordings first)"
            )
        return self.too_long(what, self.prompt_positions(num_samples, options), seconds, hint)

    def too_long(self, what: str, positions: int, seconds: float, hint: str) -> str | None:
        """Why a prompt of ``positions`` cannot be decoded (None if it leaves room)."""
        if positions < self.max_model_len:
            return None
        return (
            f"{what}: prompt of {positions} positions ({seconds:.1f} s of audio) exceeds "
            f"--max-model-len {self.max_model_len} (one position must be left to generate); "
            f"{hint}"
        )

    # -- 3. encode -----------------------------------------------------------------------

    def encode(
        self,
        audio: Sequence[np.ndarray],
        prompts: Sequence[PromptOptions],
        *,
        timing: bool = False,
    ) -> list[Encoded]:
        """Encode one encoder pass of waveforms (float32 mono at ``sample_rate``, input
        order kept) and splice each between its prompt's text embeddings. With ``timing``
        (where the encoder times words) each keeps its word-alignment data."""
        import torch

        t0 = time.perf_counter()
        timing = timing and self.encoder.word_timing
        waves = [torch.from_numpy(a) for a in audio]
        with torch.inference_mode(), self._encoder_stream():
            embeds, frames = self.encoder_pass(waves, timing=timing)
            seconds = [len(a) / self.sample_rate for a in audio]
            texts = [
                self.adapter.prompt_for_audio(p, s) for p, s in zip(prompts, seconds, strict=True)
            ]
            # one concatenation where the encoder ran, one host copy (and wait) per pass
            spliced = self.engine.embed_text.splice_many(texts, embeds)
        encode_s = time.perf_counter() - t0
        timed: Sequence[object | None] = frames if frames is not None else [None] * len(audio)
        return [
            Encoded(p, len(e), s, encode_s, f)
            for p, e, s, f in zip(spliced, embeds, seconds, timed, strict=True)
        ]

    def _encoder_stream(self) -> contextlib.AbstractContextManager[object]:
        """On a GPU, the audio encoder's own CUDA stream, so that its kernels can run
        beside those of a vLLM engine core in this process (one CUDA context; vLLM steps on
        the default stream); elsewhere nothing. :meth:`encode` ends with a blocking copy to
        the CPU on this stream, so nothing it returns is still being written."""
        import torch

        if not str(self.device).startswith("cuda"):
            return contextlib.nullcontext()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        return torch.cuda.stream(self._stream)

    def encoder_pass(
        self, waves: Sequence[torch.Tensor], *, timing: bool = False
    ) -> tuple[list[torch.Tensor], list[object] | None]:
        """``encoder.encode``; where the GPU runs out of memory (vLLM holds most of it), the
        pass is encoded again in two halves, down to one utterance, which then fails alone.
        Every encoder pass of every entry point goes through here."""
        import torch

        try:
            return self.encoder.encode(waves, timing=timing)
        except torch.OutOfMemoryError:
            if len(waves) == 1:
                raise
        # outside the handler, so the failed pass's tensors are freed before the retry
        torch.cuda.empty_cache()
        if not self._halved:
            self._halved = True
            log.warning(
                "audio encoder: out of GPU memory on a pass of %d utterances; encoding it "
                "in halves (lower --encoder-batch-seconds or --gpu-memory-utilization)",
                len(waves),
            )
        half = len(waves) // 2
        first, first_frames = self.encoder_pass(waves[:half], timing=timing)
        second, second_frames = self.encoder_pass(waves[half:], timing=timing)
        frames = (
            None
            if first_frames is None or second_frames is None
            else [*first_frames, *second_frames]
        )
        return [*first, *second], frames

    # -- 4. decoding settings ------------------------------------------------------------

    def decoding(self, options: DecodeOptions, encoded: Encoded) -> Decoding:
        """The resolved settings for one request (the rules in the module docstring)."""
        options = self.sampling_override.apply(options)
        room = self.max_model_len - len(encoded.prompt)
        if room < 1:  # checked before encoding; a safety net
            raise OptionsError(
                self.too_long("audio", len(encoded.prompt), encoded.seconds, "send shorter audio")
                or "no room to generate"
            )
        penalty = options.repetition_penalty
        if penalty is None:
            penalty = self.adapter.family.repetition_penalty
        ignore_eos = options.ignore_eos
        if options.tokens_per_second is not None:
            limit, ignore_eos = math.ceil(options.tokens_per_second * encoded.seconds), True
        else:
            limit = options.max_tokens or self.adapter.max_new_tokens(encoded.audio_tokens) or 0
            limit = limit or DEFAULT_MAX_TOKENS
        if self.max_tokens_cap is not None:
            limit = min(limit, self.max_tokens_cap)
        return Decoding(
            max_tokens=max(1, min(limit, room)),
            ignore_eos=ignore_eos,
            repetition_penalty=penalty,
            temperature=options.temperature,
            seed=options.seed,
            top_p=options.top_p,
            top_k=options.top_k,
            frequency_penalty=options.frequency_penalty,
            presence_penalty=options.presence_penalty,
            logprobs=options.logprobs,
        )

    # -- 5. finish -----------------------------------------------------------------------

    def clean(self, raw: str, options: DecodeOptions) -> str:
        """The text shown for a partial result: :meth:`finish`'s text rules."""
        return raw if options.raw_text else self._parse(raw)[0]

    def _parse(self, raw: str) -> tuple[str, tuple, bool]:
        text, segments = self.adapter.parse_output(raw.rstrip("\ufffd"))
        text, truncated = truncate_loops(text)
        return text, tuple(segments), truncated

    def finish(
        self,
        finished: Sequence[tuple[str, Encoded, Generation]],
        options: DecodeOptions,
        timing: Sequence[dict[str, float]] | None = None,
    ) -> list[Transcript]:
        """Transcripts of generations finished together, ``(key, encoded, generation)``
        each; their words (where asked and timed) aligned in one batch."""
        out = [
            self._transcript(key, enc, gen, options, timing[i] if timing else {})
            for i, (key, enc, gen) in enumerate(finished)
        ]
        timed = [i for i, (_, enc, _) in enumerate(finished) if enc.timing is not None]
        if timed and options.word_timestamps and not options.raw_text:
            texts = [out[i].text for i in timed]
            words = self.encoder.word_times(texts, [finished[i][1].timing for i in timed])
            for i, w in zip(timed, words, strict=True):
                out[i] = replace(out[i], words=tuple(w))
        return out

    def _transcript(
        self,
        key: str,
        encoded: Encoded,
        gen: Generation,
        options: DecodeOptions,
        timing: dict[str, float],
    ) -> Transcript:
        if options.raw_text:
            text, segments, truncated = gen.text, (), False
        else:
            text, segments, truncated = self._parse(gen.text)
        avg = None
        if options.logprobs and gen.cumulative_logprob is not None:
            avg = gen.cumulative_logprob / max(1, len(gen.token_ids))
        return Transcript(
            key=key,
            text=text,
            duration=round(encoded.seconds, 3),
            token_ids=gen.token_ids,
            finish_reason=gen.finish_reason,
            timing=timing,
            segments=segments or None,
            guard_truncated=truncated,
            prompt_tokens=len(encoded.prompt),
            audio_tokens=encoded.audio_tokens,
            avg_logprob=avg,
        )


def engine_failure(e: Exception) -> EngineError:
    """An engine error for an exception vLLM raised mid-request (many types)."""
    return EngineError(f"the engine failed to transcribe: {type(e).__name__}: {e}")
