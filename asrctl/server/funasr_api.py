"""``POST /asr``: FunASR's offline service (``funasr-server``, ``serve_vllm.py``).

Multipart ``file``, ``language`` (a code or a name: ``zh``, ``中文``, ``English``),
``hotwords`` (comma-separated), ``timestamp`` and ``spk``; the reply is FunASR's ``{text,
segments: [{text, start, end}], duration, processing_time, rtf}``. As FunASR's service
does, audio longer than the model's window is split by VAD (one segment per speech
stretch, up to ``--max-audio-seconds``, default an hour); shorter audio goes through in
one pass as one segment. ``timestamp=true`` adds each segment's ``words: [{word, start,
end}]`` where the model times words (Fun-ASR-Nano with its CTC head), else a ``notes``
entry. ``spk=true`` labels speakers: the upload is split at speaker changes
(:mod:`asrctl.server.diarized`) and every segment carries ``speaker`` (``SPEAKER_0``,
``SPEAKER_1``, ... in order of first appearance); ``num_speakers``, ``min_speakers`` and
``max_speakers`` fields bound the count.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from asrctl.adapters.base import PromptOptions
from asrctl.results import Word
from asrctl.server import formats
from asrctl.server.engine import DecodeOptions
from asrctl.server.errors import ApiError
from asrctl.server.openai_api import MAX_PROMPT_CHARS
from asrctl.server.state import ServerState
from asrctl.server.uploads import decode_upload, form_bool, form_text, read_form

ENDPOINT = "/asr"

router = APIRouter()


@router.post(ENDPOINT)
async def asr(request: Request) -> JSONResponse:
    """Transcribe one uploaded file, FunASR style."""
    state: ServerState = request.app.state.asr
    start = time.perf_counter()
    form = await read_form(request)
    try:
        speakers = formats.diarize_options(form) if form_bool(form, "spk") else None
        timestamp = form_bool(form, "timestamp")
        hotwords = form_text(form, "hotwords") or ""
        if len(hotwords) > MAX_PROMPT_CHARS:
            raise ApiError(
                400, f"hotwords may hold at most {MAX_PROMPT_CHARS} characters", param="hotwords"
            )
        prompt = PromptOptions(
            language=state.language(form_text(form, "language")),
            hotwords=tuple(w.strip() for w in hotwords.split(",") if w.strip()),
        )
        state.check_prompt(PromptOptions(language=prompt.language), "language")
        state.check_prompt(prompt, "hotwords")
        audio = await decode_upload(  # long audio is split by VAD, as FunASR's service does
            form, limits=state.long_limits, sample_rate=state.model.sample_rate, pool=state.pool
        )
    finally:
        await form.close()
    words = timestamp and state.model.word_timing
    decode = DecodeOptions(word_timestamps=words)
    if speakers is not None:  # FunASR's clients send spk=true by default
        from asrctl.server.diarized import transcribe_diarized

        result = await transcribe_diarized(state, ENDPOINT, audio, prompt, decode, speakers)
    else:
        result = await state.transcribe(ENDPOINT, audio, prompt, decode, vad=True)
    elapsed = time.perf_counter() - start
    segments = [
        {"text": s.text, "start": s.start, "end": s.end}
        | ({"speaker": s.speaker} if speakers is not None else {})
        for s in formats.segments_of(result)
    ]
    if result.words is not None:
        _attach_words(segments, result.words)
    body = {
        "text": result.text,
        "segments": segments,
        "duration": result.duration,
        "processing_time": round(elapsed, 3),
        "rtf": round(elapsed / result.duration, 4) if result.duration > 0 else 0,
    }
    if timestamp:
        body["notes"] = formats.notes_of(result, state.title)
    return JSONResponse(body)


def _attach_words(segments: list[dict], words: tuple[Word, ...]) -> None:
    """FunASR's per-segment ``words``: each word goes to the last segment starting at or
    before it."""
    for seg in segments:
        seg["words"] = []
    for w in words:
        seg = next((s for s in reversed(segments) if s["start"] <= w.start), segments[0])
        seg["words"].append({"word": w.word, "start": w.start, "end": w.end})
