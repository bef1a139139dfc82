"""Live transcription of audio as it arrives, independent of any transport.

A :class:`StreamingSession` is fed float32 mono samples at the stream's rate and reports
:class:`StreamUpdate` objects: every sentence locked so far (confirmed, with its times) and
the utterance in progress (tentative). Both the WebSocket route ``/ws``
(:mod:`asrctl.server.realtime`) and the library's ``ASR.stream`` drive this one class; each
supplies the ``decode`` coroutine (audio → text) and receives the updates.

How it decides (FunASR's cumulative re-decoding):

* an :class:`~asrctl.server.endpointing.Endpointer` finds where utterances start and end;
* while an utterance is open it is re-decoded from its start once ``first_partial_s`` of it
  has arrived and then every ``partial_interval_s`` of new audio, with at most
  ``partial_max_tokens``; one partial decode runs at a time (in a task: feeding goes on);
* when the endpointer closes the utterance, any partial decode still running is dropped, the
  utterance is decoded once more in full, and its text is locked as a sentence;
* audio no utterance can still need is dropped, so a long stream keeps a bounded buffer.

Times are in seconds from the stream's start, counted at the input rate (``decode`` gets the
samples at that rate and resamples them to the model's rate where it differs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from asrctl.server.endpointing import make_endpointer
from asrctl.server.options import RealtimeOptions

log = logging.getLogger("asrctl")

MIN_DECODE_S = 0.1  # shorter stretches are not worth a decode

# decode(samples at the input rate, max_tokens or None) -> cleaned text
Decode = Callable[[np.ndarray, int | None], Awaitable[str]]
OnUpdate = Callable[["StreamUpdate"], Awaitable[None]]


@dataclass(frozen=True)
class Sentence:
    """A locked (confirmed) utterance; times in seconds from the stream's start."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class StreamUpdate:
    """The transcription of a stream so far.

    Attributes:
        sentences: every utterance locked so far, in order (confirmed text).
        partial: the open utterance's latest decode (tentative: it may still change).
        partial_start: where the open utterance began (seconds); with no open utterance,
            the end of the audio so far.
        duration: seconds of audio received.
        is_final: the stream has ended; ``sentences`` is the whole transcript.
    """

    sentences: tuple[Sentence, ...]
    partial: str
    partial_start: float
    duration: float
    is_final: bool

    @property
    def confirmed(self) -> str:
        """The locked sentences' text, joined."""
        from asrctl.segment import join_texts

        return join_texts(s.text for s in self.sentences)

    @property
    def text(self) -> str:
        """Confirmed text followed by the tentative partial."""
        from asrctl.segment import join_texts

        return join_texts([self.confirmed, self.partial])


class StreamingSession:
    """One stream's audio buffer, endpointer, locked sentences and partial text."""

    def __init__(
        self,
        decode: Decode,
        sample_rate: int,
        options: RealtimeOptions | None = None,
        *,
        model_max_s: float | None = None,
        on_update: OnUpdate | None = None,
    ) -> None:
        self.decode = decode
        self.rate = sample_rate
        self.options = options or RealtimeOptions()
        self.model_max_s = model_max_s
        self.on_update = on_update
        self._partial_task: asyncio.Task | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the stream (the caller cancels any partial decode first)."""
        self.endpointer = make_endpointer(self.options, self.rate, self.model_max_s)
        self.audio = np.zeros(0, dtype=np.float32)  # kept samples
        self.audio_start = 0  # stream index of self.audio[0]
        self.total = 0  # samples received
        self.sentences: list[Sentence] = []
        self.partial = ""
        self.partial_start = 0
        self.utterance = 0  # bumped at each lock; stale partials are dropped
        self.decoded_to: int | None = None  # stream index of the last partial decode
        self.closed = False

    async def feed(self, samples: np.ndarray) -> None:
        """Take the next samples; lock the utterances that ended in them (one update
        after them), and start a partial decode when one is due."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.audio = np.concatenate([self.audio, samples])
        self.total += len(samples)
        ended = self.endpointer.feed(samples)
        for start, end in ended:
            await self.lock(start, end)
        if ended:
            await self._notify(self.result(is_final=False))
        self._trim()
        self._maybe_partial()

    async def finish(self) -> StreamUpdate:
        """End of stream: lock the utterance in progress and return the final update."""
        await self.cancel_partial()
        for start, end in self.endpointer.flush():
            await self.lock(start, end)
        self.closed = True
        return self.result(is_final=True)

    async def lock(self, start: int, end: int) -> None:
        """Decode a closed utterance in full and add it to the sentences."""
        await self.cancel_partial()
        self.utterance += 1
        self.partial, self.decoded_to = "", None
        text = await self._decode(start, end, max_tokens=None)
        if text:
            self.sentences.append(Sentence(text, self._s(start), self._s(end)))

    def result(self, *, is_final: bool) -> StreamUpdate:
        """The stream's state as an update."""
        if is_final:
            partial, partial_start = "", 0.0
        elif self.partial:
            partial, partial_start = self.partial, self._s(self.partial_start)
        else:
            start = self.endpointer.speech_start
            partial, partial_start = "", self._s(self.total if start is None else start)
        return StreamUpdate(
            sentences=tuple(self.sentences),
            partial=partial,
            partial_start=partial_start,
            duration=self._s(self.total),
            is_final=is_final,
        )

    async def cancel_partial(self) -> None:
        """Drop the partial decode in progress, if any."""
        task, self._partial_task = self._partial_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def wait_partial(self) -> None:
        """Wait for the partial decode in progress, if any, to finish."""
        task = self._partial_task
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _notify(self, update: StreamUpdate) -> None:
        if self.on_update is not None:
            await self.on_update(update)

    def _maybe_partial(self) -> None:
        start = self.endpointer.speech_start
        if start is None or (self._partial_task is not None and not self._partial_task.done()):
            return
        if self.decoded_to is None or self.decoded_to < start:
            due = self.total - start >= self.options.first_partial_s * self.rate
        else:
            due = self.total - self.decoded_to >= self.options.partial_interval_s * self.rate
        if due:
            self.decoded_to = self.total
            self._partial_task = asyncio.create_task(
                self._partial(self.utterance, start, self.total)
            )

    async def _partial(self, utterance: int, start: int, end: int) -> None:
        try:
            text = await self._decode(start, end, max_tokens=self.options.partial_max_tokens)
            if utterance == self.utterance and not self.closed:
                self.partial, self.partial_start = text, start
                await self._notify(self.result(is_final=False))
        except Exception:  # e.g. the socket went away mid-decode: its owner ends the session
            log.debug("partial decode dropped", exc_info=True)

    async def _decode(self, start: int, end: int, *, max_tokens: int | None) -> str:
        lo = max(0, start - self.audio_start)
        audio = self.audio[lo : max(lo, end - self.audio_start)]
        if len(audio) < MIN_DECODE_S * self.rate:
            return ""
        return await self.decode(audio, max_tokens)

    def _trim(self) -> None:
        """Drop audio no utterance can still need (the open one, or the padding ahead)."""
        start = self.endpointer.speech_start
        keep = self.options.speech_pad_s + self.options.min_speech_s + 0.1
        keep_from = start if start is not None else self.total - round(keep * self.rate)
        drop = min(max(0, keep_from - self.audio_start), len(self.audio))
        if drop:
            self.audio = self.audio[drop:].copy()  # a view would keep the old buffer alive
            self.audio_start += drop

    def _s(self, samples: int) -> float:
        return samples / self.rate
