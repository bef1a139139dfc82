"""Voice activity detection (Silero VAD) and segmentation of long recordings.

The model is silero-vad's TorchScript file ``silero_vad/data/silero_vad.jit``, shipped
inside the ``silero-vad`` wheel (MIT). It is loaded with ``torch.jit.load`` only: the
package's own helpers are not used, so neither torchaudio nor torchcodec is needed
(silero-vad imports them lazily, for its audio I/O helpers only). The model scores each
32 ms window (512 samples at 16 kHz) with a speech probability.

Speed and memory: a recording is read in blocks (seekable files are streamed with
soundfile + ``soxr.ResampleStream``; other sources are decoded whole) and scored in
*lanes*: ``LANES`` consecutive stretches of ``LANE_WINDOWS`` windows run as one batch, each
lane warmed up on the ``WARMUP_WINDOWS`` windows before it. Memory stays at one block of
``LANES × LANE_WINDOWS`` windows (≈ 30 MB) however long the recording; an hour is scored in
about 15 s on one CPU core.

Segmentation (:func:`segment`) turns the probabilities into segments no longer than
``max_segment``:

* a segment opens at a window scoring ``threshold`` (0.5) and goes on while windows score
  ``neg_threshold`` (0.35) or more (hysteresis, as silero's own ``get_speech_timestamps``);
* it closes after a run of silence whose required length *shrinks as the segment grows*:
  FunASR's fsmn-vad dynamic end-silence schedule (``DEFAULT_SILENCE_SCHEDULE`` in
  ``funasr/models/fsmn_vad_streaming/model.py``: 2 s of silence while the segment is under
  10 s, 1 s under 20 s, 0.8 s under 30 s, 0.6 s, 0.4 s, 0.2 s, then 0.1 s), whose time axis
  is for FunASR's 60 s segments and is scaled here to ``max_segment`` (30 s for
  Fun-ASR-Nano: 2 s under 5 s, 1 s under 10 s, ... 0.1 s from 30 s);
* a segment that reaches the limit anyway is cut at its least speech-like window in its
  second half;
* segments shorter than ``min_segment`` are merged into a neighbour less than
  ``merge_gap`` away (if the result fits the limit); those still shorter than
  ``min_speech`` are dropped (clicks, breaths);
* each is padded by ``pad`` on both sides (never overlapping a neighbour).

Silence, tones and noise yield no segment at all: the caller then returns an empty
transcript instead of letting the LLM hallucinate over non-speech.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources

import numpy as np

from asrctl.errors import AudioError

VAD_RATE = 16000  # Hz silero-vad is run at
WINDOW = 512  # samples per scored window at 16 kHz (32 ms)
WINDOW_S = WINDOW / VAD_RATE
LANES = 32  # stretches scored in one batch
LANE_WINDOWS = 480  # windows per lane (15.36 s)
WARMUP_WINDOWS = 16  # windows (0.5 s) each lane is run on before its own
READ_SECONDS = 60.0  # seconds read from a file at a time
# FunASR fsmn-vad: (segment length below which, end silence required), seconds, for 60 s.
FUNASR_SILENCE_SCHEDULE = (
    (10.0, 2.0),
    (20.0, 1.0),
    (30.0, 0.8),
    (40.0, 0.6),
    (50.0, 0.4),
    (60.0, 0.2),
    (math.inf, 0.1),
)
FUNASR_SCHEDULE_SPAN = 60.0  # FunASR's max_single_segment_time the schedule is made for


@dataclass(frozen=True)
class VadOptions:
    """Segmentation settings (seconds)."""

    max_segment: float = 30.0  # hard limit, padding included
    threshold: float = 0.5  # probability opening a segment
    neg_threshold: float = 0.35  # probability below which a window is silence
    min_segment: float = 1.0  # shorter segments are merged into a neighbour
    merge_gap: float = 1.0  # ... at most this far away
    min_speech: float = 0.25  # shorter segments still alone are dropped
    pad: float = 0.1  # added on both sides
    schedule: tuple[tuple[float, float], ...] = FUNASR_SILENCE_SCHEDULE
    schedule_span: float = FUNASR_SCHEDULE_SPAN

    def end_silence(self, segment_seconds: float) -> float:
        """Silence (s) that closes a segment of this length: shorter as it grows."""
        scale = self.max_segment / self.schedule_span
        for upto, silence in self.schedule:
            if segment_seconds < upto * scale:
                return silence
        return self.schedule[-1][1]


@dataclass(frozen=True)
class Span:
    """A stretch of a recording (seconds from its start)."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


_model_lock = threading.Lock()
_model = None


def _load_model():
    global _model
    with _model_lock:
        if _model is None:
            import torch

            path = resources.files("silero_vad.data") / "silero_vad.jit"
            with resources.as_file(path) as file, warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
                _model = torch.jit.load(str(file), map_location="cpu").eval()
        return _model


class SileroVad:
    """Silero VAD speech probabilities, one per 32 ms window, for a stream of 16 kHz audio."""

    def __init__(self) -> None:
        self.model = _load_model()
        self._lock = threading.Lock()  # the scripted model keeps its state inside

    def probabilities(self, chunks: Iterable[np.ndarray]) -> np.ndarray:
        """Score consecutive 16 kHz float32 chunks (any lengths); the tail is zero-padded."""
        lane = LANE_WINDOWS * WINDOW
        warm = WARMUP_WINDOWS * WINDOW
        block = LANES * lane
        # one buffer: the warm-up audio before the block, then the block (no other copies)
        buf = np.zeros(warm + block, dtype=np.float32)
        fill = warm
        out: list[np.ndarray] = []
        for chunk in chunks:
            chunk = np.asarray(chunk, dtype=np.float32)
            while len(chunk):
                take = min(len(chunk), len(buf) - fill)
                buf[fill : fill + take] = chunk[:take]
                fill += take
                chunk = chunk[take:]
                if fill == len(buf):
                    out.append(self._score(buf, LANES, LANES * LANE_WINDOWS))
                    buf[:warm] = buf[block:]
                    fill = warm
        if fill > warm:
            n_windows = -(-(fill - warm) // WINDOW)
            buf[fill:] = 0.0
            out.append(self._score(buf, -(-n_windows // LANE_WINDOWS), n_windows))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def _score(self, buf: np.ndarray, n_lanes: int, n_windows: int) -> np.ndarray:
        """Probabilities of the first ``n_windows`` after the warm-up, in parallel lanes.

        Lane k is ``buf[k*lane : k*lane + warm + lane]``: its own audio preceded by the
        warm-up windows (a strided view, not a copy).
        """
        import torch

        lane = LANE_WINDOWS * WINDOW
        width = (WARMUP_WINDOWS + LANE_WINDOWS) * WINDOW
        rows = np.lib.stride_tricks.as_strided(
            buf, shape=(n_lanes, width), strides=(lane * buf.itemsize, buf.itemsize)
        )
        probs = np.zeros((n_lanes, LANE_WINDOWS + WARMUP_WINDOWS), dtype=np.float32)
        with self._lock, torch.inference_mode():
            self.model.reset_states()
            for j in range(LANE_WINDOWS + WARMUP_WINDOWS):
                x = torch.from_numpy(np.ascontiguousarray(rows[:, j * WINDOW : (j + 1) * WINDOW]))
                probs[:, j] = self.model(x, VAD_RATE)[:, 0]
            self.model.reset_states()
        return probs[:, WARMUP_WINDOWS:].reshape(-1)[:n_windows]


def segment(probs: np.ndarray, duration: float, options: VadOptions | None = None) -> list[Span]:
    """Speech segments from per-window probabilities of a recording ``duration`` s long."""
    opts = options or VadOptions()
    limit = opts.max_segment - 2 * opts.pad - WINDOW_S  # room for the padding
    if limit <= 0:
        raise ValueError(f"max_segment {opts.max_segment} s is too short")
    raw: list[tuple[int, int]] = []  # window index ranges [start, end)
    start: int | None = None
    last = 0  # last window of the open segment that was speech
    for i, p in enumerate(probs):
        if start is None:
            if p >= opts.threshold:
                start, last = i, i
            continue
        if p >= opts.neg_threshold:
            last = i
        length = (i + 1 - start) * WINDOW_S
        if (i - last) * WINDOW_S >= opts.end_silence((last + 1 - start) * WINDOW_S):
            raw.append((start, last + 1))
            start = None
        elif length >= limit:
            half = start + (i + 1 - start) // 2
            cut = half + int(np.argmin(probs[half : i + 1]))
            raw.append((start, max(cut, start + 1)))
            start = max(cut, start + 1)
            last = max(last, start)
    if start is not None:
        raw.append((start, last + 1))
    spans = [Span(a * WINDOW_S, min(b * WINDOW_S, duration)) for a, b in raw]
    spans = [s for s in spans if s.duration > 0]
    return _pad(_merge(spans, opts, limit), opts, duration)


def _merge(spans: list[Span], opts: VadOptions, limit: float) -> list[Span]:
    merged = list(spans)
    changed = True
    while changed:
        changed = False
        for i, s in enumerate(merged):
            if s.duration >= opts.min_segment:
                continue
            options = []
            if i > 0 and s.start - merged[i - 1].end <= opts.merge_gap:
                options.append((s.start - merged[i - 1].end, i - 1))
            if i + 1 < len(merged) and merged[i + 1].start - s.end <= opts.merge_gap:
                options.append((merged[i + 1].start - s.end, i + 1))
            for _, j in sorted(options):
                a, b = min(i, j), max(i, j)
                joined = Span(merged[a].start, merged[b].end)
                if joined.duration <= limit:
                    merged[a : b + 1] = [joined]
                    changed = True
                    break
            if changed:
                break
    return [s for s in merged if s.duration >= opts.min_speech]


def _pad(spans: list[Span], opts: VadOptions, duration: float) -> list[Span]:
    out: list[Span] = []
    for i, s in enumerate(spans):
        lo = max(0.0, s.start - opts.pad, out[-1].end if out else 0.0)
        hi = min(duration, s.end + opts.pad)
        if i + 1 < len(spans):
            hi = min(hi, (s.end + spans[i + 1].start) / 2)
        out.append(Span(round(lo, 3), round(hi, 3)))
    return out


def stream_audio(item, sample_rate: int = VAD_RATE) -> tuple[Iterator[np.ndarray], list[float]]:
    """Blocks of an :class:`~asrctl.inputs.AudioItem` as float32 mono at ``sample_rate``.

    Returns the block iterator and a one-element list that holds the duration (s) once the
    iterator is exhausted. Seekable files are read ``READ_SECONDS`` at a time; anything else
    is decoded whole (``AudioItem.load``).
    """
    total = [0.0]

    def whole() -> Iterator[np.ndarray]:
        audio = item.load(sample_rate)
        total[0] = len(audio) / sample_rate
        step = int(READ_SECONDS * sample_rate)
        for a in range(0, len(audio), step):
            yield audio[a : a + step]

    if item.kind != "path":
        return whole(), total
    import soundfile as sf

    try:
        handle = sf.SoundFile(str(item.source))
        seekable = handle.seekable() and handle.frames > 0
    except Exception:  # not for libsndfile: PyAV decodes it whole
        return whole(), total
    if not seekable:
        handle.close()
        return whole(), total

    def blocks() -> Iterator[np.ndarray]:
        import soxr

        with handle:
            rate = handle.samplerate
            first = round(item.start * rate)
            last = handle.frames if item.end is None else min(handle.frames, round(item.end * rate))
            if first >= last:
                raise AudioError(item.key, "empty audio (0 samples)")
            handle.seek(first)
            resampler = (
                soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality="HQ")
                if rate != sample_rate
                else None
            )
            left = last - first
            n_out = 0
            while left > 0:
                frames = handle.read(
                    min(left, int(READ_SECONDS * rate)), dtype="float32", always_2d=True
                )
                if not len(frames):
                    break
                left -= len(frames)
                if not np.isfinite(frames).all():
                    raise AudioError(item.key, "audio contains NaN or Inf samples")
                mono = frames.mean(axis=1, dtype=np.float32)
                if resampler is not None:
                    mono = resampler.resample_chunk(mono, last=left <= 0)
                n_out += len(mono)
                yield np.clip(mono, -1.0, 1.0)
            total[0] = n_out / sample_rate

    return blocks(), total


def detect(
    item, options: VadOptions | None = None, vad: SileroVad | None = None
) -> tuple[list[Span], float]:
    """Speech segments of an audio item (seconds from the item's start) and its duration."""
    blocks, total = stream_audio(item, VAD_RATE)
    probs = (vad or SileroVad()).probabilities(blocks)
    if total[0] <= 0:
        raise AudioError(item.key, "empty audio (0 samples)")
    return segment(probs, total[0], options), total[0]


def detect_array(
    audio: np.ndarray,
    sample_rate: int,
    options: VadOptions | None = None,
    vad: SileroVad | None = None,
) -> list[Span]:
    """Speech segments of in-memory float32 mono samples (e.g. a decoded upload)."""
    if sample_rate != VAD_RATE:
        import soxr

        audio = soxr.resample(audio, sample_rate, VAD_RATE)
    step = int(READ_SECONDS * VAD_RATE)
    probs = (vad or SileroVad()).probabilities(
        audio[a : a + step] for a in range(0, len(audio), step)
    )
    return segment(probs, len(audio) / VAD_RATE, options)
