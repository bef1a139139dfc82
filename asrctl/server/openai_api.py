"""OpenAI's audio API: ``POST /v1/audio/transcriptions`` and ``GET /v1/models``.

Fields are read from the multipart form as the official SDKs send them. What asrctl
cannot honour is refused with a 400 naming the field, never silently dropped:
``timestamp_granularities[]=word`` (only where the model times words: Fun-ASR-Nano with
its CTC head; verbose_json then carries ``words``), ``include[]``,
``chunking_strategy`` and speaker references (``known_speaker_names[]``).

Speakers: ``diarize=true`` (asrctl's field) or ``response_format=diarized_json`` splits
the upload at speaker changes (:mod:`asrctl.server.diarized`); ``diarized_json`` answers
OpenAI's ``TranscriptionDiarized`` shape, and verbose_json/srt/vtt segments carry the
speaker. ``num_speakers`` / ``min_speakers`` / ``max_speakers`` bound the count.

``prompt`` (and the ``keywords[]`` / ``hotwords`` fields) become the family's hotword
context: the text is split at commas, enumeration commas, semicolons and line breaks.
``temperature`` 0 (the default) decodes greedily; above 0 it samples.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.datastructures import FormData

from asrctl.adapters.base import PromptOptions
from asrctl.diarize import DiarizeOptions
from asrctl.errors import OptionsError
from asrctl.pipeline import DecodeOptions
from asrctl.results import Transcript
from asrctl.server import formats
from asrctl.server.errors import ApiError
from asrctl.server.state import ServerState
from asrctl.server.uploads import decode_upload, form_bool, form_list, form_text, read_form

ENDPOINT = "/v1/audio/transcriptions"
MAX_PROMPT_CHARS = 2000
_HOTWORD_SPLIT = re.compile(r"[,，、;；\n]+")
_UNSUPPORTED = {
    "include[]": "`include` is not available: no logprobs are returned",
    "include": "`include` is not available: no logprobs are returned",
    "chunking_strategy": "`chunking_strategy` is not available: long-audio segmentation "
    "is not implemented yet",
    "known_speaker_names[]": "known speakers are not available: speakers are labelled "
    "SPEAKER_0, SPEAKER_1, ... (diarize=true)",
    "known_speaker_references[]": "known speakers are not available: speakers are labelled "
    "SPEAKER_0, SPEAKER_1, ... (diarize=true)",
}
_MEDIA_TYPES = {
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}

router = APIRouter()


@dataclass(frozen=True)
class TranscriptionRequest:
    """The form's fields, validated."""

    model: str
    response_format: str
    language: str | None
    prompt: PromptOptions
    decode: DecodeOptions
    stream: bool
    # "vllm": vLLM's transcription chunks (``choices[0].delta.content``, usage, [DONE]),
    # for clients that send vLLM's stream fields (``vllm bench serve``); else OpenAI's
    stream_format: str = "openai"
    speakers: DiarizeOptions | None = None


@router.post(ENDPOINT)
async def create_transcription(request: Request) -> Response:
    """Transcribe one uploaded file (OpenAI's ``audio.transcriptions.create``)."""
    state: ServerState = request.app.state.asr
    form = await read_form(request)
    try:
        req = parse_request(form, state)
        audio = await decode_upload(
            form, limits=state.limits, sample_rate=state.model.sample_rate, pool=state.pool
        )
    finally:
        await form.close()
    if req.stream and state.needs_segmenting(audio):
        raise ApiError(
            400,
            "stream=true is not available for audio longer than the model's window "
            "(it is split by VAD); send it with stream=false",
            param="stream",
            code="unsupported_value",
        )
    if req.stream:
        events = _vllm_chunks if req.stream_format == "vllm" else _events
        return StreamingResponse(
            events(state, audio, req),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    if req.speakers is not None:
        from asrctl.server.diarized import transcribe_diarized

        result = await transcribe_diarized(
            state, ENDPOINT, audio, req.prompt, req.decode, req.speakers
        )
    else:
        result = await state.transcribe(ENDPOINT, audio, req.prompt, req.decode)
    return render(req, result, state.title)


def parse_request(form: FormData, state: ServerState) -> TranscriptionRequest:
    """Validate the form's fields (400/404 naming the field at fault)."""
    for name, why in _UNSUPPORTED.items():
        if form.getlist(name):
            raise ApiError(400, why, param=name, code="unsupported_parameter")
    model = state.resolve_model(form_text(form, "model"))
    response_format = (form_text(form, "response_format") or "json").strip()
    if response_format not in formats.RESPONSE_FORMATS:
        raise ApiError(
            400,
            f"response_format {response_format!r} is not available; use one of "
            f"{', '.join(formats.RESPONSE_FORMATS)}",
            param="response_format",
            code="unsupported_value",
        )
    stream = form_bool(form, "stream")
    diarize = form_bool(form, "diarize") or response_format == "diarized_json"
    if stream and diarize:
        raise ApiError(
            400,
            "stream=true is not available with speaker diarization; send stream=false",
            param="stream",
            code="unsupported_value",
        )
    if stream and response_format not in ("json", "text"):
        raise ApiError(
            400,
            "stream=true sends transcript.text.delta/done events; use response_format "
            f"json or text, not {response_format}",
            param="stream",
            code="unsupported_value",
        )
    words = _check_granularities(form, state.title, state.model.word_timing)
    language = (form_text(form, "language") or "").strip() or None
    prompt = PromptOptions(
        language=state.language(language),
        hotwords=hotwords_from(form),
        itn=not form_bool(form, "no_itn"),
    )
    state.check_prompt(PromptOptions(language=prompt.language), "language")
    state.check_prompt(prompt, "prompt")
    decode = decode_options(
        form,
        logprobs=response_format == "verbose_json",
        word_timestamps=words and response_format == "verbose_json",
    )
    vllm_fields = ("stream_include_usage", "stream_continuous_usage_stats")
    stream_format = "vllm" if any(form.get(n) is not None for n in vllm_fields) else "openai"
    speakers = formats.diarize_options(form) if diarize else None
    return TranscriptionRequest(
        model, response_format, language, prompt, decode, stream, stream_format, speakers
    )


# Sampling fields a client may send, each honoured (DecodeOptions' field of that name);
# max_completion_tokens is the newer name of max_tokens.
_FLOAT_FIELDS = ("temperature", "top_p", "repetition_penalty", "frequency_penalty",
                 "presence_penalty")  # fmt: skip
_INT_FIELDS = {"max_tokens": "max_tokens", "max_completion_tokens": "max_tokens",
               "top_k": "top_k", "seed": "seed"}  # fmt: skip


def decode_options(form: FormData, **fixed: bool) -> DecodeOptions:
    """The request's sampling fields as DecodeOptions; a field out of range → 400 naming it."""
    values: dict[str, float | int | bool] = dict(fixed)
    for name in _FLOAT_FIELDS:
        value = form_text(form, name)
        if value is not None and value.strip():
            values[name] = _float(value, name, default=0.0)
    for name, field_name in _INT_FIELDS.items():
        value = form_text(form, name)
        if value is not None and value.strip():
            values[field_name] = _int(value, name)
    if form_bool(form, "ignore_eos"):  # vLLM's extension: exactly max_tokens (benchmarks)
        values["ignore_eos"] = True
    try:
        return DecodeOptions(**values)  # type: ignore[arg-type]
    except OptionsError as e:
        param = next((n for n in (*_FLOAT_FIELDS, *_INT_FIELDS) if str(e).startswith(n)), None)
        raise ApiError(400, str(e), param=param) from None


def hotwords_from(form: FormData) -> tuple[str, ...]:
    """Hotwords from ``prompt``, ``keywords[]`` and ``hotwords`` (400 if too long)."""
    texts = [form_text(form, "prompt") or "", form_text(form, "hotwords") or ""]
    texts += form_list(form, ("keywords[]", "keywords"))
    if sum(len(t) for t in texts) > MAX_PROMPT_CHARS:
        raise ApiError(
            400,
            f"prompt and keywords may hold at most {MAX_PROMPT_CHARS} characters",
            param="prompt",
        )
    return split_hotwords(*texts)


def split_hotwords(*texts: str) -> tuple[str, ...]:
    """Hotwords of free text: split at commas, enumeration commas, semicolons and line
    breaks; duplicates dropped, order kept."""
    words = (w.strip() for t in texts for w in _HOTWORD_SPLIT.split(t))
    return tuple(dict.fromkeys(w for w in words if w))


def render(req: TranscriptionRequest, result: Transcript, model_title: str) -> Response:
    """The response body in the requested format."""
    fmt = req.response_format
    if fmt == "json":
        return JSONResponse(formats.json_body(result))
    if fmt == "diarized_json":
        return JSONResponse(formats.diarized_json_body(result))
    if fmt == "verbose_json":
        return JSONResponse(
            formats.verbose_json_body(result, req.language, model_title, req.decode.temperature)
        )
    if fmt == "text":
        body = formats.text_body(result)
    elif fmt == "srt":
        body = formats.srt(result)  # its segments, times filled as segments_of does
    else:
        body = formats.vtt(result)
    return PlainTextResponse(body, media_type=_MEDIA_TYPES[fmt])


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    state: ServerState = request.app.state.asr
    return {"object": "list", "data": [_model_card(state, n) for n in state.names]}


@router.get("/v1/models/{name:path}")
async def get_model(name: str, request: Request) -> dict:
    state: ServerState = request.app.state.asr
    return _model_card(state, state.resolve_model(name))


def _model_card(state: ServerState, name: str) -> dict:
    family = state.model.adapter.family
    return {
        "id": name,
        "object": "model",
        "created": state.created,
        "owned_by": "asrctl",
        # as vLLM's cards: the folder holding the LLM's tokenizer (vllm bench serve loads
        # its tokenizer from here when not given --model/--tokenizer)
        "root": str(state.model.llm_dir),
        "parent": None,
        "max_model_len": state.model.max_model_len,
        "family": family.name,
        "max_audio_seconds": state.limits.max_seconds,
        "languages": sorted(family.languages),
        "timestamps": False,
    }


async def _events(state: ServerState, audio, req: TranscriptionRequest) -> AsyncIterator[str]:
    """OpenAI's transcription stream: ``transcript.text.delta`` events, then one
    ``transcript.text.done`` with the full text (authoritative) and token usage.

    A delta is sent once the cleaned text extends what was sent; trailing whitespace is
    held back, as clean-up may strip it. Failures arrive as an ``error`` event.
    """
    sent = ""
    try:
        async for progress in state.stream(ENDPOINT, audio, req.prompt, req.decode):
            text = progress.result.text if progress.result else progress.text.rstrip()
            if len(text) > len(sent) and text.startswith(sent):
                yield formats.sse(formats.delta_event(text[len(sent) :]))
                sent = text
            if progress.result is not None:
                yield formats.sse(formats.done_event(progress.result))
    except ApiError as e:
        yield formats.sse(e.body(), name="error")


async def _vllm_chunks(state: ServerState, audio, req: TranscriptionRequest) -> AsyncIterator[str]:
    """vLLM's transcription stream: ``transcription.chunk`` objects whose
    ``choices[0].delta.content`` grows the text, a usage chunk, then ``data: [DONE]``."""
    head = {
        "id": f"trsc-{uuid.uuid4().hex}",
        "object": "transcription.chunk",
        "created": int(time.time()),
        "model": req.model,
    }
    sent = ""
    try:
        async for progress in state.stream(ENDPOINT, audio, req.prompt, req.decode):
            result = progress.result
            text = result.text if result else progress.text.rstrip()
            if len(text) > len(sent) and text.startswith(sent):
                delta = {"content": text[len(sent) :]}
                yield formats.sse({**head, "choices": [{"delta": delta, "finish_reason": None}]})
                sent = text
            if result is not None:
                done = {"delta": {}, "finish_reason": result.finish_reason or "stop"}
                yield formats.sse({**head, "choices": [done]})
                usage = {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": len(result.token_ids),
                    "total_tokens": result.prompt_tokens + len(result.token_ids),
                }
                yield formats.sse({**head, "choices": [], "usage": usage})
    except ApiError as e:
        yield formats.sse(e.body())
    yield "data: [DONE]\n\n"


def _float(value: str | None, name: str, *, default: float) -> float:
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, not {value!r}", param=name) from None
    if not math.isfinite(number):
        raise ApiError(400, f"{name} must be finite", param=name)
    return number


def _int(value: str, name: str) -> int:
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or int(text) >= 2**63:
        raise ApiError(
            400, f"{name} must be an integer from 0 to 2**63-1, not {value[:30]!r}", param=name
        )
    return int(text)


def _check_granularities(form: FormData, model_title: str, word_timing: bool) -> bool:
    """Validate ``timestamp_granularities[]``; True when word timestamps are asked for."""
    values = form_list(form, ("timestamp_granularities[]", "timestamp_granularities"))
    for value in values:
        if value not in ("segment", "word"):
            raise ApiError(
                400,
                f"timestamp_granularities[] values are segment and word, not {value!r}",
                param="timestamp_granularities[]",
                code="unsupported_value",
            )
        if value == "word" and not word_timing:
            raise ApiError(
                400,
                f"word timestamps are not available for {model_title}: the model gives no "
                "timestamps (segment is: one segment spans the audio; Fun-ASR-Nano times "
                "words only with the CTC head of its ModelScope checkpoint)",
                param="timestamp_granularities[]",
                code="unsupported_value",
            )
    return "word" in values
