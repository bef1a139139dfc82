"""Utterance endpointing for live audio (``/ws``).

An :class:`Endpointer` is fed the stream's samples as they arrive and reports utterances
that have ended, as absolute sample ranges; ``speech_start`` tells where the open one
began. :class:`EnergyEndpointer` decides by frame loudness alone, which is enough for
close-talking microphones; a neural VAD (silero) can replace it behind the same protocol
(see :func:`make_endpointer`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from asrctl.server.options import RealtimeOptions

FRAME_S = 0.03  # analysis frame, seconds
DEFAULT_MAX_UTTERANCE_S = 20.0  # when the family has no per-pass limit
_EPS = 1e-10  # keeps log10 finite on digital silence

Span = tuple[int, int]  # [start, end) in samples since the stream began


class Endpointer(Protocol):
    """Finds utterances in a stream of float32 mono samples."""

    @property
    def speech_start(self) -> int | None:
        """Start of the utterance in progress (None in silence)."""

    def feed(self, samples: np.ndarray) -> list[Span]:
        """Consume the next samples; return the utterances that ended within them."""

    def flush(self) -> list[Span]:
        """End of stream: close the utterance in progress, if any."""


def make_endpointer(
    options: RealtimeOptions, sample_rate: int, model_max_s: float | None
) -> Endpointer:
    """The endpointer ``/ws`` sessions use."""
    limit = options.max_utterance_s or min(DEFAULT_MAX_UTTERANCE_S, model_max_s or np.inf)
    return EnergyEndpointer(
        sample_rate,
        threshold_db=options.energy_threshold_db,
        min_speech_s=options.min_speech_s,
        min_silence_s=options.min_silence_s,
        pad_s=options.speech_pad_s,
        max_utterance_s=limit,
    )


class EnergyEndpointer:
    """Speech is any frame whose RMS exceeds ``threshold_db`` (dBFS).

    An utterance opens after ``min_speech_s`` of consecutive loud frames (starting
    ``pad_s`` before the first of them), closes ``pad_s`` after its last loud frame once
    ``min_silence_s`` of quiet has followed, and is cut at ``max_utterance_s``.
    """

    def __init__(
        self,
        sample_rate: int,
        *,
        threshold_db: float,
        min_speech_s: float,
        min_silence_s: float,
        pad_s: float,
        max_utterance_s: float,
    ) -> None:
        self.frame = max(1, round(FRAME_S * sample_rate))
        self.threshold_db = threshold_db
        self.min_speech = max(1, round(min_speech_s / FRAME_S))  # frames
        self.min_silence = max(1, round(min_silence_s / FRAME_S))  # frames
        self.pad = round(pad_s * sample_rate)  # samples
        self.max_len = round(max_utterance_s * sample_rate)  # samples
        self._pending = np.zeros(0, dtype=np.float32)  # samples short of a whole frame
        self._consumed = 0  # samples analysed so far
        self._start: int | None = None
        self._loud_run = 0  # consecutive loud frames before an utterance opens
        self._quiet_run = 0  # consecutive quiet frames inside an utterance
        self._last_loud_end = 0
        self._last_end = 0  # end of the last closed utterance

    @property
    def speech_start(self) -> int | None:
        return self._start

    def feed(self, samples: np.ndarray) -> list[Span]:
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        whole = len(data) - len(data) % self.frame
        self._pending = data[whole:]
        ended = []
        for offset in range(0, whole, self.frame):
            span = self._step(data[offset : offset + self.frame])
            if span is not None:
                ended.append(span)
        return ended

    def flush(self) -> list[Span]:
        end = self._consumed + len(self._pending)
        self._pending = np.zeros(0, dtype=np.float32)
        if self._start is None:
            return []
        span = (self._start, min(end, self._last_loud_end + self.pad))
        self._close(span[1])
        return [span]

    def _step(self, frame: np.ndarray) -> Span | None:
        start = self._consumed
        self._consumed += len(frame)
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64))))
        loud = 20 * np.log10(rms + _EPS) > self.threshold_db
        if self._start is None:
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run >= self.min_speech:
                first_loud = start - (self._loud_run - 1) * self.frame
                self._start = max(self._last_end, first_loud - self.pad, 0)
                self._last_loud_end = self._consumed
                self._quiet_run = 0
            return None
        if loud:
            self._quiet_run = 0
            self._last_loud_end = self._consumed
        else:
            self._quiet_run += 1
        if self._quiet_run >= self.min_silence:
            span = (self._start, min(self._consumed, self._last_loud_end + self.pad))
        elif self._consumed - self._start >= self.max_len:
            span = (self._start, self._start + self.max_len)
        else:
            return None
        self._close(span[1])
        return span

    def _close(self, end: int) -> None:
        self._start = None
        self._last_end = end
        self._loud_run = 0
        self._quiet_run = 0
