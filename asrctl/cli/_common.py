"""Small builders the commands share (engine and transcription options from CLI flags)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asrctl.diarize import DiarizeOptions
    from asrctl.engine import EngineOptions
    from asrctl.transcribe import TranscribeOptions


def engine_options(
    *,
    dtype: str,
    tensor_parallel_size: int,
    gpu_memory_utilization: float | None,
    max_model_len: int | None,
    max_num_seqs: int | None,
    enforce_eager: bool,
) -> EngineOptions:
    """The vLLM settings from the shared ``Engine (vLLM)`` options."""
    from asrctl.engine import EngineOptions

    return EngineOptions(
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager,
    )


def split_hotwords(values: Sequence[str] | None) -> tuple[str, ...]:
    """``["a,b", "c"]`` → ``("a", "b", "c")``."""
    return tuple(w.strip() for v in values or () for w in v.split(",") if w.strip())


def transcribe_options(
    *,
    language: str | None,
    hotwords: Sequence[str] | None,
    no_itn: bool,
    batch_size: int | None,
    max_tokens: int | None,
    max_in_flight: int | None = None,
    word_timestamps: bool = True,
    encoder_batch_seconds: float | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    repetition_penalty: float | None = None,
    raw_text: bool = False,
    tokens_per_second: float | None = None,
) -> TranscribeOptions:
    """The transcription settings from the shared flags (``batch_size``, ``max_in_flight``
    and ``encoder_batch_seconds`` None: the defaults)."""
    from asrctl.transcribe import TranscribeOptions, default_batch_size

    options = TranscribeOptions(
        language=language,
        hotwords=split_hotwords(hotwords),
        itn=not no_itn,
        batch_size=batch_size or default_batch_size(),
        max_tokens=max_tokens,
        word_timestamps=word_timestamps,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        repetition_penalty=repetition_penalty,
        raw_text=raw_text,
        tokens_per_second=tokens_per_second,
    )
    if encoder_batch_seconds is not None:
        options = replace(options, encoder_batch_seconds=encoder_batch_seconds)
    return options if max_in_flight is None else replace(options, max_in_flight=max_in_flight)


def diarize_options(
    *,
    diarize: bool,
    num_speakers: int | None,
    min_speakers: int | None,
    max_speakers: int | None,
) -> DiarizeOptions | None:
    """The speaker settings (None: no diarization); a speaker count without ``--diarize``
    is an error naming it."""
    from asrctl.diarize import DiarizeOptions
    from asrctl.errors import OptionsError

    counts = {"--num-speakers": num_speakers, "--min-speakers": min_speakers,
              "--max-speakers": max_speakers}  # fmt: skip
    if not diarize:
        given = [name for name, value in counts.items() if value is not None]
        if given:
            raise OptionsError(f"{given[0]} needs --diarize")
        return None
    from asrctl.speaker_embed import weights_path

    weights_path()  # the voice encoder is installed: checked before the model loads
    return DiarizeOptions(
        num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers
    )
