"""Batch transcription: audio items in, transcripts out, through one adapter and one engine.

A batch of ``batch_size`` items is loaded by a thread pool while the previous batch is on
the engine. Within a batch, utterances are sorted by length and encoded in sub-batches of
``encoder_batch_size`` (little padding), their embeddings spliced between the prompt's
text embeddings, and the whole batch handed to vLLM in one ``generate`` call, which
schedules it with continuous batching. Inputs that fail to load are returned as
``Failure`` objects; the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asrctl.adapters.base import Adapter, PromptOptions
from asrctl.adapters.registry import load_adapter
from asrctl.engine import Engine, EngineOptions
from asrctl.errors import AsrctlError, OptionsError
from asrctl.export import PreparedModel, export_llm
from asrctl.inputs import AudioItem
from asrctl.results import Failure, Transcript

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger("asrctl")

DEFAULT_MAX_TOKENS = 512  # the reference implementations' max_new_tokens
LOADER_THREADS = 4


@dataclass(frozen=True)
class TranscribeOptions:
    """What to transcribe and how.

    Attributes:
        language: language code (family-specific; None or "auto" lets the model decide).
        hotwords: words to bias recognition towards, where the family supports it.
        itn: inverse text normalisation where the family can switch it off.
        batch_size: utterances per engine call; results are written after each.
        encoder_batch_size: utterances per audio-encoder forward pass.
        max_tokens: cap on generated tokens per utterance (None: 512).
        ignore_eos: generate exactly max_tokens (benchmarks only).
        repetition_penalty: penalty on already generated tokens (> 0; 1.0 = none;
            None: the family's default, e.g. 3.0 for FireRedASR-LLM).
    """

    language: str | None = None
    hotwords: tuple[str, ...] = ()
    itn: bool = True
    batch_size: int = 64
    encoder_batch_size: int = 16
    max_tokens: int | None = None
    ignore_eos: bool = False
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.encoder_batch_size < 1:
            raise OptionsError("batch sizes must be at least 1")
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


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Transcriber:
    """A model directory prepared, its encoder loaded and its LLM running in vLLM."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        engine_options: EngineOptions | None = None,
        device: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        import torch

        self.adapter: Adapter = load_adapter(model_dir)
        self.prepared: PreparedModel = export_llm(self.adapter, cache_dir=cache_dir)
        self.device = device or default_device()
        self.encoder = self.adapter.audio_encoder(self.device, torch.float32)
        self.engine = Engine(self.prepared.llm_dir, engine_options or EngineOptions())

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
        """Yield one list of results per batch, in completion order."""
        options = options or TranscribeOptions()
        self.adapter.prompt(options.prompt)  # fail fast on unsupported options
        with ThreadPoolExecutor(LOADER_THREADS) as pool:
            pending: list[Future] | None = None
            for batch in _chunks(items, options.batch_size):
                submitted = [pool.submit(self._load, item) for item in batch]
                if pending is not None:
                    yield self._run(pending, options)
                pending = submitted
            if pending is not None:
                yield self._run(pending, options)

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

    def _run(self, futures: list[Future], options: TranscribeOptions) -> list[Transcript | Failure]:
        loaded = [f.result() for f in futures]
        failures: list[Transcript | Failure] = [x for x in loaded if isinstance(x, Failure)]
        ok = [x for x in loaded if isinstance(x, _Loaded)]
        return failures + (self.transcribe_loaded(ok, options) if ok else [])

    def transcribe_loaded(
        self, loaded: Sequence[_Loaded], options: TranscribeOptions
    ) -> list[Transcript | Failure]:
        """Encode, splice and decode one batch of loaded audio."""
        t0 = time.perf_counter()
        embeds = self.encode([x.audio for x in loaded], options.encoder_batch_size)
        t1 = time.perf_counter()
        prompts, limits, results = [], [], []
        keep = []
        for x, emb in zip(loaded, embeds, strict=True):
            prompt = self.build_prompt(emb, options.prompt)
            room = self.engine.max_model_len - len(prompt)
            if room < 1:
                results.append(
                    Failure(
                        x.item.key,
                        f"{x.item.key}: prompt of {len(prompt)} positions exceeds max_model_len",
                    )
                )
                continue
            prompts.append(prompt)
            default = self.adapter.max_new_tokens(len(emb)) or DEFAULT_MAX_TOKENS
            limits.append(min(options.max_tokens or default, room))
            keep.append(x)
        penalty = options.repetition_penalty
        if penalty is None:
            penalty = self.adapter.family.repetition_penalty
        gens = self.engine.generate(
            prompts,
            max_tokens=limits,
            ignore_eos=options.ignore_eos,
            repetition_penalty=penalty,
        )
        t2 = time.perf_counter()
        timing = {
            "batch_encode_s": round(t1 - t0, 4),
            "batch_generate_s": round(t2 - t1, 4),
            "batch_size": len(loaded),
        }
        for x, gen in zip(keep, gens, strict=True):
            results.append(
                Transcript(
                    key=x.item.key,
                    text=self.adapter.postprocess(gen.text),
                    duration=round(len(x.audio) / self.sample_rate, 3),
                    token_ids=gen.token_ids,
                    finish_reason=gen.finish_reason,
                    timing=timing,
                )
            )
        return results

    def encode(self, waves: Sequence[np.ndarray], batch_size: int) -> list[torch.Tensor]:
        """Audio embeddings per waveform, encoded in length-sorted sub-batches."""
        import torch

        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        out: list[torch.Tensor | None] = [None] * len(waves)
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                tensors = [torch.from_numpy(waves[i]) for i in idx]
                for i, emb in zip(idx, self.encoder(tensors), strict=True):
                    out[i] = emb
        return [e for e in out if e is not None]

    def build_prompt(self, audio: torch.Tensor, options: PromptOptions) -> torch.Tensor:
        """``prefix text ⊕ audio ⊕ suffix text`` as one ``(seq, hidden)`` tensor."""
        import torch

        prompt = self.adapter.prompt(options)
        parts = [
            self.engine.embed_text(prompt.prefix),
            audio.to("cpu", self.engine.dtype),
            self.engine.embed_text(prompt.suffix),
        ]
        return torch.cat(parts)


def _chunks(items: Iterable[AudioItem], size: int) -> Iterator[list[AudioItem]]:
    batch: list[AudioItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
