"""Subtitle writers shared by ``transcribe --format srt|vtt`` and ``serve`` (SubRip, WebVTT).

Both take a sequence of cues: anything with ``start`` and ``end`` (seconds) and ``text``.
Cues whose text is blank are left out; cue text never holds a blank line or the ``-->``
arrow (either would end or break the cue). A cue with a speaker (``--diarize``) is written
``[SPEAKER_0] text`` in SubRip and with WebVTT's voice tag, ``<v SPEAKER_0>text``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from asrctl.results import Transcript


class Cue(Protocol):
    """What a writer reads of a cue (read-only, so frozen dataclasses such as
    :class:`SimpleCue` satisfy it)."""

    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...
    @property
    def text(self) -> str: ...


def _speaker(cue: Cue) -> str | None:
    speaker = getattr(cue, "speaker", None)
    return None if speaker is None else str(speaker)


def _srt_text(cue: Cue) -> str:
    text = cue_text(cue.text)
    speaker = _speaker(cue)
    return text if speaker is None else f"[{speaker}] {text}"


def _vtt_text(cue: Cue) -> str:
    text = cue_text(cue.text)
    speaker = _speaker(cue)
    if speaker is None:
        return text
    name = speaker.replace("<", "").replace(">", "").replace("&", "")
    return f"<v {name}>{text.replace('&', '&amp;').replace('<', '&lt;')}"


def srt(segments: Transcript | Sequence[Cue]) -> str:
    """A SubRip file: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, blank-line separated.
    Takes a transcript (its segments, or one cue spanning it) or the cues themselves."""
    segments = _cues(segments)
    cues = [
        f"{i}\n{clock(s.start, ',')} --> {clock(s.end, ',')}\n{_srt_text(s)}\n"
        for i, s in enumerate(non_empty(segments), start=1)
    ]
    return "\n".join(cues)


def vtt(segments: Transcript | Sequence[Cue]) -> str:
    """A WebVTT file: the ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues.
    Takes a transcript or the cues themselves, as :func:`srt`."""
    segments = _cues(segments)
    cues = [
        f"{clock(s.start, '.')} --> {clock(s.end, '.')}\n{_vtt_text(s)}\n"
        for s in non_empty(segments)
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def _cues(source: Transcript | Sequence[Cue]) -> Sequence[Cue]:
    from asrctl.results import Transcript

    return transcript_cues(source) if isinstance(source, Transcript) else source


def jsonl(results: Iterable[Transcript]) -> str:
    """``results.jsonl`` lines of transcripts (one JSON object a line, as ``transcribe``
    writes them)."""
    from asrctl.results import json_line

    return "".join(json_line(r.to_json()) + "\n" for r in results)


def clock(seconds: float, decimal_marker: str) -> str:
    """``3723.5`` → ``01:02:03,500`` (with ``decimal_marker`` ``,``)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def non_empty(segments: Sequence[Cue]) -> list[Cue]:
    return [s for s in segments if s.text.strip()]


def cue_text(text: str) -> str:
    """Cue text cannot hold blank lines or the ``-->`` arrow."""
    lines = [line.strip() for line in text.replace("-->", "->").splitlines()]
    return "\n".join(line for line in lines if line)


SUBTITLE_FORMATS = {"srt": srt, "vtt": vtt}
TRANSCRIBE_FORMATS = ("text", "jsonl", "srt", "vtt")


@dataclass(frozen=True)
class SimpleCue:
    start: float
    end: float
    text: str
    speaker: int | str | None = None


def transcript_cues(transcript: Transcript) -> list[SimpleCue]:
    """Cues of a transcript: its segments, or one spanning it. A time the model left out
    is filled from its neighbours."""
    if transcript.segments is None:
        return [SimpleCue(0.0, transcript.duration, transcript.text)]
    segs = list(transcript.segments)
    cues: list[SimpleCue] = []
    for i, s in enumerate(segs):
        start = s.start if s.start is not None else (cues[-1].end if cues else 0.0)
        end = s.end
        if end is None or end < start:
            after = [x.start for x in segs[i + 1 :] if x.start is not None]
            end = after[0] if after and after[0] >= start else max(start, transcript.duration)
        cues.append(SimpleCue(start, end, s.text, s.speaker))
    return cues


def parse_formats(values: Sequence[str] | None) -> tuple[str, ...]:
    """``["text,srt", "vtt"]`` → ``("text", "srt", "vtt")``; default ``("text", "jsonl")``."""
    from asrctl.errors import OptionsError

    names = [v.strip().lower() for value in values or () for v in value.split(",") if v.strip()]
    for name in names:
        if name not in TRANSCRIBE_FORMATS:
            raise OptionsError(f"--format {name!r} is not one of {', '.join(TRANSCRIBE_FORMATS)}")
    return tuple(dict.fromkeys(names)) or ("text", "jsonl")


def subtitle_path(out_dir: Path, key: str, fmt: str) -> Path:
    """``OUT/<key>.<fmt>``, with path separators in the key replaced by ``__``."""
    safe = key.replace("/", "__").replace("\\", "__")
    if safe in ("", ".", ".."):
        safe = f"_{safe}"
    return out_dir / f"{safe}.{fmt}"


def write_subtitles(out_dir: Path, transcript: Transcript, formats: Sequence[str]) -> list[Path]:
    """Write ``OUT/<key>.srt`` / ``.vtt`` for the subtitle formats among ``formats``."""
    written = []
    for fmt in formats:
        if fmt not in SUBTITLE_FORMATS:
            continue
        path = subtitle_path(out_dir, transcript.key, fmt)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(SUBTITLE_FORMATS[fmt](transcript_cues(transcript)), encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written
