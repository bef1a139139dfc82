"""Offline benchmark: transcribe a test set, time it honestly and score it.

Two timers, each reported as the median of ``repeat`` runs after ``warmup`` utterances
(the model load is timed separately and excluded from both):

* ``end_to_end``: audio files on disk → text, through ``Transcriber.transcribe``: file
  read and decode, resampling, features, audio encoder, prompt assembly, LLM prefill and
  decode, detokenisation and clean-up, with the pipeline's own overlap of loading and
  engine work.
* ``engine_only``: the same pipeline fed with audio already decoded into memory (float32
  at the model's rate): features, audio encoder, prompt assembly, LLM, detokenisation
  and clean-up (plus one finite-check/clip copy of each array). It needs
  4 bytes × rate × seconds of RAM for the whole set and is skipped, with a notice, when
  that would take more than half of the free memory.

RTFx = seconds of audio transcribed / wall seconds. Failed inputs add time, never audio.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from asrctl.errors import AsrctlError, OptionsError
from asrctl.inputs import AudioItem, from_arrays
from asrctl.results import Failure, Transcript

if TYPE_CHECKING:
    from asrctl.segment import LongAudio
    from asrctl.transcribe import TranscribeOptions, Transcriber

E2E = "end_to_end"
ENGINE = "engine_only"
SCOPES = {
    E2E: "audio files on disk → text: file read/decode, resample, features, audio encoder, "
    "prompt assembly, LLM prefill+decode, detokenize, clean-up; model load excluded",
    ENGINE: "decoded float32 audio in memory → text: features, audio encoder, prompt "
    "assembly, LLM prefill+decode, detokenize, clean-up; file decode/resample and model "
    "load excluded",
}
BYTES_PER_SAMPLE = 4  # float32
RAM_SHARE = 0.5  # engine_only may hold at most this share of available memory


@dataclass(frozen=True)
class BenchOptions:
    """How the set is timed.

    Attributes:
        warmup: utterances transcribed before any timer starts.
        repeat: timed runs per mode; the median wall time is reported.
        engine_only: also time the pipeline on audio decoded into memory beforehand.
    """

    warmup: int = 4
    repeat: int = 3
    engine_only: bool = True

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeat < 1:
            raise OptionsError("--warmup must be >= 0 and --repeat >= 1")


@dataclass(frozen=True)
class Speed:
    """One timer's runs."""

    mode: str  # E2E | ENGINE
    scope: str  # what the timer covers
    wall_s: tuple[float, ...]  # one per run
    audio_s: float  # seconds of audio transcribed per run

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def rtfx(self) -> float:
        return self.audio_s / self.median_s if self.median_s > 0 else float("inf")

    def to_json(self) -> dict:
        return {
            "scope": self.scope,
            "runs_wall_s": [round(w, 4) for w in self.wall_s],
            "median_wall_s": round(self.median_s, 4),
            "audio_s": round(self.audio_s, 3),
            "rtfx": round(self.rtfx, 2),
            "rtfx_runs": [round(self.audio_s / w, 2) if w else None for w in self.wall_s],
        }


@dataclass(frozen=True)
class OfflineRun:
    """Everything the offline benchmark measured."""

    transcripts: tuple[Transcript, ...]  # from the first end-to-end run
    failures: tuple[Failure, ...]
    speeds: tuple[Speed, ...]
    warmup_utterances: int
    deterministic: bool  # every timed run produced the same texts
    notes: tuple[str, ...] = ()


def run_offline(
    transcriber: Transcriber | LongAudio,
    items: Sequence[AudioItem],
    options: TranscribeOptions,
    bench: BenchOptions,
    on_step: Callable[[str], None] | None = None,
) -> OfflineRun:
    """Warm up, then time ``repeat`` end-to-end runs and ``repeat`` engine-only runs."""
    step = on_step or (lambda _msg: None)
    if not items:
        raise AsrctlError("nothing to benchmark: no inputs")
    warm = list(items[: bench.warmup])
    if warm:
        step(f"warm-up: {len(warm)} utterances")
        _timed(transcriber, warm, options)
    runs = []
    for i in range(bench.repeat):
        step(f"end-to-end run {i + 1}/{bench.repeat}")
        runs.append(_timed(transcriber, items, options))
    first, _ = runs[0]
    transcripts = tuple(r for r in first if isinstance(r, Transcript))
    failures = tuple(r for r in first if isinstance(r, Failure))
    speeds = [_speed(E2E, runs)]
    texts = [_texts(results) for results, _ in runs]
    notes: list[str] = []
    if bench.engine_only:
        memory = _in_memory(transcriber, items, transcripts, notes)
        if memory:
            eng = []
            for i in range(bench.repeat):
                step(f"engine-only run {i + 1}/{bench.repeat}")
                eng.append(_timed(transcriber, memory, options))
            speeds.append(_speed(ENGINE, eng))
            texts += [_texts(results) for results, _ in eng]
    return OfflineRun(
        transcripts=transcripts,
        failures=failures,
        speeds=tuple(speeds),
        warmup_utterances=len(warm),
        deterministic=all(t == texts[0] for t in texts),
        notes=tuple(notes),
    )


def _timed(
    transcriber: Transcriber | LongAudio, items: Sequence[AudioItem], options: TranscribeOptions
) -> tuple[list[Transcript | Failure], float]:
    start = time.perf_counter()
    results = [r for batch in transcriber.transcribe(items, options) for r in batch]
    return results, time.perf_counter() - start


def _speed(mode: str, runs: list[tuple[list[Transcript | Failure], float]]) -> Speed:
    audio = sum(r.duration for r in runs[0][0] if isinstance(r, Transcript))
    return Speed(mode, SCOPES[mode], tuple(wall for _, wall in runs), audio)


def _texts(results: list[Transcript | Failure]) -> dict[str, str]:
    return {r.key: r.text for r in results if isinstance(r, Transcript)}


def _in_memory(
    transcriber: Transcriber | LongAudio,
    items: Sequence[AudioItem],
    transcripts: Sequence[Transcript],
    notes: list[str],
) -> list[AudioItem]:
    """The items that transcribed, decoded into float32 arrays at the model's rate."""
    rate = transcriber.sample_rate
    need = sum(t.duration for t in transcripts) * rate * BYTES_PER_SAMPLE
    free = _available_bytes()
    if free is not None and need > RAM_SHARE * free:
        notes.append(
            f"engine-only timing skipped: the decoded set needs {need / 2**30:.1f} GiB, "
            f"more than half of the {free / 2**30:.1f} GiB available"
        )
        return []
    ok = {t.key for t in transcripts}
    arrays = {i.key: i.load(rate) for i in items if i.key in ok}
    return from_arrays(arrays, rate)


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
