"""Long recordings: split by VAD, transcribed through the batched pipeline, stitched back.

:class:`LongAudio` wraps a :class:`~asrctl.transcribe.Transcriber`. Each input that needs
it is run through :func:`asrctl.vad.detect` (in a background thread, a few inputs ahead);
its speech segments become sub-items (the same source, cut to ``[start, end)``) that go
through the transcriber's ordinary batches together with everything else, so segments of
one recording and of different recordings share encoder batches and vLLM. When the last
segment of an input is back, one :class:`~asrctl.results.Transcript` is yielded for the
input key: the segments' texts joined in time order, ``segments`` = ``[{start, end, text}]``
in seconds from the input's start, and a note that times are segment-level only.

Which inputs are segmented:

* ``vad=None`` (auto): inputs longer than the family's per-pass limit
  (``Family.max_audio_seconds``), for families that have one; others go through in one pass;
* ``vad=True``: every input (silence-only or noise-only input gives an empty transcript);
* ``vad=False``: none (inputs over the limit fail, as without this module).

Speakers (``diarize``, :mod:`asrctl.diarize`): every input goes through VAD, its speech
spans are cut at speaker changes, and each speaker turn is transcribed as its own segment
(``Segment.speaker`` = ``SPEAKER_k``), so no segment spans a change. Families that write
speaker ids themselves (VibeVoice-ASR) are transcribed as without diarization and their
ids relabelled to the same scheme.

Word timestamps exist only where the model gives them (Fun-ASR-Nano with the CTC head of
its ModelScope checkpoint): each segment's words are moved to the input's clock. Otherwise
none are invented and ``notes`` says so.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from asrctl.errors import AsrctlError
from asrctl.inputs import AudioItem
from asrctl.results import Failure, Segment, Transcript
from asrctl.vad import SileroVad, Span, VadOptions, detect, detect_array

if TYPE_CHECKING:
    from asrctl.diarize import DiarizeOptions, Diarizer

VAD_AHEAD = 2  # inputs run through VAD ahead of the transcriber
NO_WORD_TIMES = (
    "{title} gives no word timestamps: segment start/end come from voice activity detection"
)
NO_SPEECH = "no speech detected"
OWN_TIMES = "{title}'s own segment timestamps, offset by each VAD segment's start"


@dataclass
class _Parent:
    item: AudioItem
    duration: float
    spans: list[Span]
    texts: dict[int, Transcript] = field(default_factory=dict)
    failed: str | None = None
    remaining: int = 0  # segments not back yet
    speakers: list[str] | None = None  # one per span, when diarized


class LongAudio:
    """Segment-and-stitch front end of a transcriber (see the module docstring)."""

    def __init__(
        self,
        transcriber,
        *,
        vad: bool | None = None,
        options: VadOptions | None = None,
        diarize: DiarizeOptions | None = None,
    ) -> None:
        from asrctl.diarize import gives_speakers

        self.transcriber = transcriber
        family = transcriber.adapter.family
        self.diarize = diarize
        # acoustic diarization, unless the model writes speakers itself (then relabelled)
        self.own_speakers = diarize is not None and gives_speakers(family.name)
        self._diarizer: Diarizer | None = None
        self.limit = family.max_audio_seconds
        self.title = family.title
        self.vad = vad
        max_segment = self.limit if self.limit is not None else VadOptions().max_segment
        self.options = options or VadOptions(max_segment=min(max_segment, 30.0))
        self._silero: SileroVad | None = None

    @property
    def sample_rate(self) -> int:
        return self.transcriber.sample_rate

    def needs_vad(self, item: AudioItem) -> bool:
        if self.diarize is not None and not self.own_speakers:
            return True
        if self.vad is not None:
            return self.vad
        if self.limit is None:
            return False
        duration = item.duration()
        return duration is None or duration > self.limit

    def transcribe(self, items: Iterable[AudioItem], options=None) -> Iterator[list]:
        """Like ``Transcriber.transcribe``: lists of results finished after each batch."""
        parents: dict[str, _Parent] = {}
        by_sub: dict[str, tuple[str, int]] = {}
        ready: list[Transcript | Failure] = []
        feed = self._feed(items, parents, by_sub, ready)
        for batch in self.transcriber.transcribe(feed, options):
            out = _drain(ready)  # the transcriber's producer thread appends to it
            for r in batch:
                if r.key not in by_sub:
                    out.append(self._relabel(r))
                    continue
                key, index = by_sub.pop(r.key)
                parent = parents[key]
                if isinstance(r, Failure):
                    parent.failed = parent.failed or r.error
                else:
                    parent.texts[index] = r
                parent.remaining -= 1
                if parent.remaining == 0:
                    out.append(self._stitch(parents.pop(key)))
            if out:
                yield out
        if ready:
            yield _drain(ready)

    def _feed(self, items, parents, by_sub, ready) -> Iterator[AudioItem]:
        """Items for the transcriber: whole inputs, or the segments of segmented ones."""
        with ThreadPoolExecutor(1) as pool:
            queue: list[tuple[AudioItem, Future | None]] = []
            for item in items:
                future = pool.submit(self._detect, item) if self.needs_vad(item) else None
                queue.append((item, future))
                while len(queue) > VAD_AHEAD or (queue and queue[0][1] is None):
                    yield from self._expand(*queue.pop(0), parents, by_sub, ready)
            for entry in queue:
                yield from self._expand(*entry, parents, by_sub, ready)

    def _detect(self, item: AudioItem) -> tuple[list[Span], float, list[str] | None]:
        if self._silero is None:
            self._silero = SileroVad()
        if self.diarize is None or self.own_speakers:
            return (*detect(item, self.options, self._silero), None)
        from asrctl.diarize import RATE, Diarizer

        if self._diarizer is None:
            self._diarizer = Diarizer(self.diarize)
        audio = item.load(RATE)
        spans = detect_array(audio, RATE, self.options, self._silero)
        turns = self._diarizer.turns(audio, spans)
        return [Span(t.start, t.end) for t in turns], len(audio) / RATE, [t.label for t in turns]

    def _relabel(self, r):
        """A one-pass result: the model's own speakers relabelled (VibeVoice-ASR)."""
        if self.own_speakers and isinstance(r, Transcript):
            from asrctl.diarize import relabel

            return relabel(r)
        return r

    def _expand(self, item, future, parents, by_sub, ready) -> Iterator[AudioItem]:
        if future is None:
            yield item
            return
        try:
            spans, duration, speakers = future.result()
        except AsrctlError as e:
            ready.append(Failure(item.key, str(e)))
            return
        if self.vad is None and speakers is None and duration <= (self.limit or float("inf")):
            yield item  # unknown length turned out short: one pass, as without VAD
            return
        parent = _Parent(item, duration, spans, speakers=speakers)
        if not spans:
            ready.append(self._stitch(parent))
            return
        parents[item.key] = parent
        parent.remaining = len(spans)
        subs = [
            replace(
                item,
                key=f"{item.key}[{span.start:.2f}-{span.end:.2f}]",
                start=item.start + span.start,
                end=item.start + span.end,
            )
            for span in spans
        ]
        for i, sub in enumerate(subs):  # all registered before the first is transcribed
            by_sub[sub.key] = (item.key, i)
        yield from subs

    def _stitch(self, parent: _Parent) -> Transcript | Failure:
        key = parent.item.key
        if parent.failed:
            return Failure(key, f"{key}: a segment failed: {parent.failed}")
        parts = [parent.texts[i] for i in range(len(parent.spans))]
        result = stitch(key, parent.duration, parent.spans, parts, self.title, parent.speakers)
        return self._relabel(result)


def stitch(
    key: str,
    duration: float,
    spans: Sequence[Span],
    parts: Sequence[Transcript],
    title: str,
    speakers: Sequence[str] | None = None,
) -> Transcript:
    """One result for an input transcribed in pieces: ``parts[i]`` is the transcript of
    ``spans[i]`` (seconds from the input's start), said by ``speakers[i]`` when diarized.
    Texts joined in time order; segments are the spans with their texts (or the model's
    own segments, moved to the input's clock); words moved likewise (kept only when every
    part has them); token counts summed."""
    segments: list[Segment] = []
    timing: dict[str, float] = {}
    who = list(speakers) if speakers is not None else [None] * len(spans)
    for span, r, speaker in zip(spans, parts, who, strict=True):
        if r.segments:  # the model's own timestamps (VibeVoice): moved to the input's clock
            segments.extend(s.shifted(span.start) for s in r.segments)
        else:
            segments.append(Segment(span.start, span.end, r.text, r.token_ids, speaker))
        for name, value in r.timing.items():
            timing[name] = round(max(timing.get(name, 0.0), value), 4)
    timed = bool(parts) and all(r.words is not None for r in parts)
    notes = [] if timed else [NO_WORD_TIMES.format(title=title)]
    if any(r.segments for r in parts):
        notes = [OWN_TIMES.format(title=title)]
    if not spans:
        notes.insert(0, NO_SPEECH)
    words = [w.shifted(s.start) for s, r in zip(spans, parts, strict=True) for w in r.words or ()]
    scored = [(r.avg_logprob, len(r.token_ids)) for r in parts if r.avg_logprob is not None]
    n_scored = sum(k for _, k in scored)
    return Transcript(
        key=key,
        text=join_texts(r.text for r in parts),
        duration=round(duration, 3),
        token_ids=tuple(t for r in parts for t in r.token_ids),
        finish_reason="length" if any(r.finish_reason == "length" for r in parts) else "stop",
        timing=timing,
        segments=tuple(segments),
        guard_truncated=any(r.guard_truncated for r in parts),
        notes=tuple(notes),
        words=tuple(words) if timed else None,
        prompt_tokens=sum(r.prompt_tokens for r in parts),
        audio_tokens=sum(r.audio_tokens for r in parts),
        avg_logprob=sum(a * k for a, k in scored) / n_scored if n_scored else None,
    )


def _drain(ready: list) -> list:
    """Take everything from ``ready`` while another thread may append (pop is atomic)."""
    out = []
    while ready:
        out.append(ready.pop(0))
    return out


def join_texts(texts: Iterable[str]) -> str:
    """Join segment texts: no space between CJK characters, one space otherwise."""
    out = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if out and not (_is_cjk(out[-1]) or _is_cjk(text[0])):
            out += " "
        out += text
    return out


def _is_cjk(ch: str) -> bool:
    name = unicodedata.name(ch, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "IDEOGRAPHIC", "FULLWIDTH"))
