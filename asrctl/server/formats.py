"""Response bodies: OpenAI's json, text, verbose_json, srt, vtt and streaming events.

Families without timestamps (all of them for now) produce one segment spanning the whole
audio; subtitle files then hold one cue. Every format is built from the same
:class:`Segment` list, so a family that gains timestamps changes only how segments are made.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from asrctl.server.engine import Result

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
NO_TIMESTAMPS_NOTE = (
    "{model} gives no timestamps: one segment spans the whole audio; "
    "word timestamps are not available"
)


@dataclass(frozen=True)
class Segment:
    """A stretch of audio and its text (seconds)."""

    id: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]


def segments_of(result: Result) -> list[Segment]:
    """The segments of a result: one spanning the audio, as the model gives no timestamps."""
    return [Segment(0, 0.0, result.duration, result.text, result.token_ids)]


def usage_duration(result: Result) -> dict:
    return {"type": "duration", "seconds": result.duration}


def usage_tokens(result: Result) -> dict:
    """OpenAI's token usage: input = prompt positions (text + audio), output = generated."""
    return {
        "type": "tokens",
        "input_tokens": result.prompt_tokens,
        "output_tokens": len(result.token_ids),
        "total_tokens": result.prompt_tokens + len(result.token_ids),
        "input_token_details": {
            "audio_tokens": result.audio_tokens,
            "text_tokens": result.prompt_tokens - result.audio_tokens,
        },
    }


def json_body(result: Result) -> dict:
    return {"text": result.text, "usage": usage_duration(result)}


def verbose_json_body(result: Result, language: str | None, model_title: str) -> dict:
    """OpenAI's ``verbose_json`` (``TranscriptionVerbose``), segments included.

    ``no_speech_prob`` is null: the model does not estimate it. ``notes`` says how the
    segments were made.
    """
    return {
        "task": "transcribe",
        "language": language or "unknown",
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": s.id,
                "seek": 0,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": result.temperature,
                "avg_logprob": result.avg_logprob,
                "compression_ratio": compression_ratio(s.text),
                "no_speech_prob": None,
            }
            for s in segments_of(result)
        ],
        "usage": usage_duration(result),
        "notes": [NO_TIMESTAMPS_NOTE.format(model=model_title)],
    }


def text_body(result: Result) -> str:
    return result.text + "\n"


def srt(segments: Sequence[Segment]) -> str:
    """A SubRip file: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, blank-line separated."""
    cues = [
        f"{i}\n{clock(s.start, ',')} --> {clock(s.end, ',')}\n{_cue_text(s.text)}\n"
        for i, s in enumerate(_non_empty(segments), start=1)
    ]
    return "\n".join(cues)


def vtt(segments: Sequence[Segment]) -> str:
    """A WebVTT file: the ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues."""
    cues = [
        f"{clock(s.start, '.')} --> {clock(s.end, '.')}\n{_cue_text(s.text)}\n"
        for s in _non_empty(segments)
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def clock(seconds: float, decimal_marker: str) -> str:
    """``3723.5`` → ``01:02:03,500`` (with ``decimal_marker`` ``,``)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: text bytes over their zlib-compressed size."""
    data = text.encode("utf-8")
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0


def sse(event: dict, name: str | None = None) -> str:
    """One server-sent event carrying ``event`` as JSON."""
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(event, ensure_ascii=False)}\n\n"


def delta_event(delta: str) -> dict:
    return {"type": "transcript.text.delta", "delta": delta}


def done_event(result: Result) -> dict:
    return {"type": "transcript.text.done", "text": result.text, "usage": usage_tokens(result)}


def _non_empty(segments: Sequence[Segment]) -> list[Segment]:
    return [s for s in segments if s.text.strip()]


def _cue_text(text: str) -> str:
    """Cue text cannot hold blank lines or the ``-->`` arrow."""
    lines = [line.strip() for line in text.replace("-->", "->").splitlines()]
    return "\n".join(line for line in lines if line)
