"""Response bodies: OpenAI's json, text, verbose_json, srt, vtt and streaming events.

Families without timestamps produce one segment spanning the whole audio; subtitle files
then hold one cue. Word timestamps (Fun-ASR-Nano with its CTC head, when asked for with
``timestamp_granularities[]=word``) go into verbose_json's ``words``. Every format is built
from the same :class:`Segment` list.
"""

from __future__ import annotations

import json
import zlib
from typing import TYPE_CHECKING

from asrctl.results import Segment, Transcript, Word
from asrctl.writers import clock, srt, transcript_cues, vtt  # noqa: F401  (shared with `transcribe --format`)

if TYPE_CHECKING:
    from asrctl.diarize import DiarizeOptions

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt", "diarized_json")
NO_TIMESTAMPS_NOTE = (
    "{model} gives no timestamps: one segment spans the whole audio; "
    "word timestamps are not available"
)
OWN_NOTE = "segments, their times and speakers are {model}'s own; word timestamps are not available"
VAD_NOTE = (
    "segments come from voice activity detection (the audio was longer than {model} takes "
    "in one pass); {model} gives no word timestamps"
)


def segments_of(result: Transcript) -> list[Segment]:
    """The result's segments (VAD or the model's own), else one spanning the audio; times
    a model left out are filled from its neighbours (as the subtitle writers do)."""
    if result.segments is None:
        return [Segment(0.0, result.duration, result.text, result.token_ids)]
    cues = transcript_cues(result)
    return [
        Segment(c.start, c.end, s.text, s.tokens, s.speaker)
        for s, c in zip(result.segments, cues, strict=True)
    ]


def notes_of(result: Transcript, model_title: str) -> list[str]:
    if result.segments is None:
        note = NO_TIMESTAMPS_NOTE.format(model=model_title)
    elif not result.notes or any("own segment timestamps" in n for n in result.notes):
        # one pass, or VAD pieces: the segments (and their times) are the model's own
        note = OWN_NOTE.format(model=model_title)
    else:
        note = VAD_NOTE.format(model=model_title)
    if result.words is not None:  # the words are timed; only the segments are not
        note = note.split("; ")[0] + "; words are timed by CTC forced alignment"
    return [note]


def usage_duration(result: Transcript) -> dict:
    return {"type": "duration", "seconds": result.duration}


def usage_tokens(result: Transcript) -> dict:
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


def json_body(result: Transcript) -> dict:
    return {"text": result.text, "usage": usage_duration(result)}


def verbose_json_body(
    result: Transcript, language: str | None, model_title: str, temperature: float = 0.0
) -> dict:
    """OpenAI's ``verbose_json`` (``TranscriptionVerbose``), segments included.

    ``no_speech_prob`` is null: the model does not estimate it. ``notes`` says how the
    segments were made. A segment the model gave a speaker (VibeVoice-ASR) has ``speaker``.
    """
    return {
        "task": "transcribe",
        "language": language or "unknown",
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "id": i,
                "seek": 0,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": temperature,
                "avg_logprob": result.avg_logprob,
                "compression_ratio": compression_ratio(s.text),
                "no_speech_prob": None,
                **({"speaker": s.speaker} if s.speaker is not None else {}),
            }
            for i, s in enumerate(segments_of(result))
        ],
        **({"words": [_word(w) for w in result.words]} if result.words is not None else {}),
        "usage": usage_duration(result),
        "notes": notes_of(result, model_title),
    }


def _word(w: Word) -> dict:
    """OpenAI's ``TranscriptionWord`` (word, start, end) plus the alignment's score."""
    return w.to_json()


def text_body(result: Transcript) -> str:
    return result.text + "\n"


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


def done_event(result: Transcript) -> dict:
    return {"type": "transcript.text.done", "text": result.text, "usage": usage_tokens(result)}


def diarized_json_body(result: Transcript) -> dict:
    """OpenAI's ``diarized_json`` (``TranscriptionDiarized``): segments with ``type``,
    ``id``, ``start``, ``end``, ``text`` and ``speaker``."""
    return {
        "task": "transcribe",
        "duration": result.duration,
        "text": result.text,
        "segments": [
            {
                "type": "transcript.text.segment",
                "id": f"seg_{i}",
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "speaker": s.speaker if s.speaker is not None else "SPEAKER_0",
            }
            for i, s in enumerate(segments_of(result))
            if s.text.strip()
        ],
        "usage": usage_duration(result),
    }


def diarize_options(form) -> DiarizeOptions:
    """The speaker-count fields of a form (``num_speakers``, ``min_speakers``,
    ``max_speakers``) as DiarizeOptions; a bad value is a 400 naming the field."""
    from asrctl.diarize import DiarizeOptions
    from asrctl.errors import OptionsError
    from asrctl.server.errors import ApiError

    values: dict[str, int] = {}
    for name in ("num_speakers", "min_speakers", "max_speakers"):
        value = form.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        text = value.strip() if isinstance(value, str) else ""
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 64:
            raise ApiError(400, f"{name} must be an integer from 1 to 64", param=name)
        values[name] = int(text)
    try:
        return DiarizeOptions(**values)
    except OptionsError as e:
        raise ApiError(400, str(e), param="num_speakers") from None
