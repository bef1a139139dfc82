"""OpenAI chat completions with audio: ``POST /v1/chat/completions``.

The clients of vLLM's ASR deployments (VibeVoice-ASR, GLM-ASR) send one user message whose
content parts hold the audio and, often, a text instruction:

* ``{"type": "input_audio", "input_audio": {"data": <base64>, "format": "wav"}}``;
* ``{"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,..."}}``, or a
  ``file://`` URL under the operator's ``--allowed-local-media-path`` (symlinks and ``..``
  resolved first); http(s) URLs are refused: the server fetches nothing;
* ``{"type": "text", "text": ...}`` parts and system messages: the family decides how text
  enters its prompt (``Family.chat_text``): hotwords / context for Fun-ASR-Nano and
  VibeVoice-ASR, the instruction for GLM-ASR-Nano; FireRedASR-LLM has no text prompt and
  ignores it. ``<|audio|>``-style placeholders are dropped.

The assistant message is the transcription; a family that writes structured output
(VibeVoice-ASR's JSON segment list) answers with it as the model wrote it, and the parsed
segments in the message's extra ``segments`` field. ``stream=true`` sends
``chat.completion.chunk`` events and ``data: [DONE]``. Sampling fields are honoured as on
``/v1/audio/transcriptions`` (``max_tokens``/``max_completion_tokens``, ``temperature``,
``top_p``, ``top_k``, ``seed``, ``repetition_penalty``, ``frequency_penalty``,
``presence_penalty``); ``--sampling-override`` beats them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from asrctl.adapters.base import PromptOptions
from asrctl.errors import OptionsError
from asrctl.pipeline import DecodeOptions
from asrctl.results import Transcript
from asrctl.server import formats
from asrctl.server.errors import ApiError
from asrctl.server.openai_api import MAX_PROMPT_CHARS, split_hotwords
from asrctl.server.state import ServerState
from asrctl.server.uploads import decode_audio

ENDPOINT = "/v1/chat/completions"
_PLACEHOLDER = re.compile(r"<\|[a-z_]*audio[a-z_]*\|>|<audio>|</audio>", re.IGNORECASE)
_DATA_URL = re.compile(r"^data:(?P<kind>[\w/+.-]*)(?:;[\w=-]+)*;base64,(?P<data>.*)$", re.DOTALL)
_SAMPLING = ("temperature", "top_p", "top_k", "seed", "repetition_penalty",
             "frequency_penalty", "presence_penalty")  # fmt: skip

router = APIRouter()


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request, validated."""

    model: str
    audio: AudioRef
    text: str
    decode: DecodeOptions
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class AudioRef:
    """Where a message's audio is: inline bytes, or a local file the operator allowed."""

    name: str  # for messages
    data: bytes | None = None
    path: Path | None = None


@router.post(ENDPOINT)
async def create_chat_completion(request: Request) -> Response:
    state: ServerState = request.app.state.asr
    req = structured(state, parse_chat(await _json_body(request), state))
    data = req.audio.data if req.audio.data is not None else _read_allowed(req.audio, state)
    audio = await decode_audio(
        data,
        req.audio.name,
        limits=state.limits,
        sample_rate=state.model.sample_rate,
        pool=state.pool,
        param="messages",
    )
    prompt = chat_prompt(state, req.text)
    if req.stream:
        return StreamingResponse(
            _chunks(state, audio, prompt, req),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    result = await state.transcribe(ENDPOINT, audio, prompt, req.decode)
    return JSONResponse(completion_body(state, req, result))


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def parse_chat(body: dict[str, Any], state: ServerState) -> ChatRequest:
    """Validate a chat completion body (400/404 naming the field at fault)."""
    model = state.resolve_model(_opt(body, "model", str))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    audio: list[AudioRef] = []
    texts: list[str] = []
    for i, message in enumerate(messages):
        _read_message(message, i, audio, texts)
    if len(audio) != 1:
        raise ApiError(
            400,
            f"send exactly one audio part (input_audio or audio_url), got {len(audio)}",
            param="messages",
        )
    text = " ".join(t for t in (_PLACEHOLDER.sub(" ", t).strip() for t in texts) if t)
    if len(text) > MAX_PROMPT_CHARS:
        raise ApiError(
            400, f"message text may hold at most {MAX_PROMPT_CHARS} characters", param="messages"
        )
    stream = bool(_opt(body, "stream", bool) or False)
    options = _opt(body, "stream_options", dict) or {}
    return ChatRequest(
        model=model,
        audio=audio[0],
        text=text,
        decode=_decode(body),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
    )


def _read_message(message: Any, i: int, audio: list[AudioRef], texts: list[str]) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(400, f"{where} must be an object with a role", param="messages")
    content = message.get("content")
    if message["role"] == "assistant" or content is None:
        return  # earlier answers carry no audio to transcribe
    if isinstance(content, str):
        texts.append(content)
        return
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content must be a string or a list", param="messages")
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "input_audio":
            audio.append(_input_audio(part.get("input_audio"), f"{where}.content[{j}]"))
        elif kind == "audio_url":
            audio.append(_audio_url(part.get("audio_url"), f"{where}.content[{j}]"))
        else:
            raise ApiError(
                400,
                f"{where}.content[{j}]: unsupported part type {kind!r} "
                "(use text, input_audio or audio_url)",
                param="messages",
            )


def _input_audio(value: Any, where: str) -> AudioRef:
    if not isinstance(value, dict) or not isinstance(value.get("data"), str):
        raise ApiError(400, f"{where}.input_audio needs a base64 `data` string", param="messages")
    fmt = value.get("format") if isinstance(value.get("format"), str) else "audio"
    return AudioRef(name=f"{where} ({fmt})", data=_b64(value["data"], where))


def _audio_url(value: Any, where: str) -> AudioRef:
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise ApiError(400, f"{where}.audio_url needs a `url` string", param="messages")
    if match := _DATA_URL.match(url):
        return AudioRef(
            name=f"{where} ({match['kind'] or 'data'})", data=_b64(match["data"], where)
        )
    if url.startswith("file://"):
        return AudioRef(name=f"{where} (file)", path=Path(unquote(urlsplit(url).path)))
    scheme = url.split(":", 1)[0][:10] if ":" in url else "no scheme"
    raise ApiError(
        400,
        f"{where}: audio URLs of kind {scheme!r} are not fetched; send the audio inline "
        "(input_audio, or a data: URL), or a file:// path the operator allowed with "
        "--allowed-local-media-path",
        param="messages",
        code="unsupported_value",
    )


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: the audio is not valid base64", param="messages") from None


def _read_allowed(ref: AudioRef, state: ServerState) -> bytes:
    """A ``file://`` audio's bytes, only from under ``--allowed-local-media-path``."""
    allowed = state.options.allowed_local_media_path
    if allowed is None:
        raise ApiError(
            400,
            f"{ref.name}: file:// URLs are off; the operator allows them with "
            "--allowed-local-media-path DIR",
            param="messages",
            code="unsupported_value",
        )
    assert ref.path is not None
    root = allowed.resolve()
    path = ref.path.resolve()  # symlinks and .. resolved before the check
    if not path.is_relative_to(root) or not path.is_file():
        raise ApiError(
            400,
            f"{ref.name}: not a file under the allowed media path",
            param="messages",
            code="invalid_audio",
        )
    limit = state.limits.max_bytes
    with path.open("rb") as f:
        data = f.read(limit + 1)
    return data


def chat_prompt(state: ServerState, text: str) -> PromptOptions:
    """How the messages' text enters the family's prompt (``Family.chat_text``)."""
    family = state.model.adapter.family
    prompt = PromptOptions()
    if text and family.chat_text == "hotwords":
        prompt = PromptOptions(hotwords=split_hotwords(text))
    elif text and family.chat_text == "instruction":
        prompt = PromptOptions(instruction=text)
    state.check_prompt(prompt, "messages")
    return prompt


def _decode(body: dict[str, Any]) -> DecodeOptions:
    values: dict[str, Any] = {}
    for name in _SAMPLING:
        value = body.get(name)
        if value is not None:
            kind = int if name in ("top_k", "seed") else (int, float)
            values[name] = _number(value, name, kind)
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            values["max_tokens"] = _number(body[name], name, int)
            break
    try:
        return DecodeOptions(**values)
    except OptionsError as e:
        param = next((n for n in (*_SAMPLING, "max_tokens") if str(e).startswith(n)), None)
        raise ApiError(400, str(e), param=param) from None


def _number(value: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ApiError(400, f"{name} must be a number, not {value!r:.30}", param=name)
    if isinstance(value, float) and not np.isfinite(value):
        raise ApiError(400, f"{name} must be finite", param=name)
    return value


def _opt(body: dict[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise ApiError(400, f"{name} must be of type {kind.__name__}", param=name)
    return value


def _content(state: ServerState, result: Transcript, raw: str | None) -> dict[str, Any]:
    """The assistant message: the text, or a structured family's output as written."""
    if raw is None:
        return {"role": "assistant", "content": result.text}
    _, segments = state.model.adapter.parse_output(raw)
    return {
        "role": "assistant",
        "content": raw.strip(),
        "segments": [s.to_json() for s in segments],
    }


def completion_body(state: ServerState, req: ChatRequest, result: Transcript) -> dict:
    raw = result.text if req.decode.raw_text else None
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [
            {
                "index": 0,
                "message": _content(state, result, raw),
                "finish_reason": result.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": _usage(result),
    }


def _usage(result: Transcript) -> dict[str, int]:
    completion = len(result.token_ids)
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": result.prompt_tokens + completion,
    }


async def _chunks(
    state: ServerState, audio: np.ndarray, prompt: PromptOptions, req: ChatRequest
) -> AsyncIterator[str]:
    """``chat.completion.chunk`` events: the role, content deltas, the finish reason, the
    usage when asked (``stream_options.include_usage``), then ``[DONE]``."""
    head = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": req.model,
    }

    def chunk(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return formats.sse({**head, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    sent = ""
    try:
        async for progress in state.stream(ENDPOINT, audio, prompt, req.decode):
            result = progress.result
            text = result.text if result else progress.text.rstrip()
            if len(text) > len(sent) and text.startswith(sent):
                yield chunk({"content": text[len(sent) :]})
                sent = text
            if result is not None:
                yield chunk({}, result.finish_reason or "stop")
                if req.include_usage:
                    yield formats.sse({**head, "choices": [], "usage": _usage(result)})
    except ApiError as e:
        yield formats.sse(e.body())
    yield "data: [DONE]\n\n"


def structured(state: ServerState, req: ChatRequest) -> ChatRequest:
    """A family writing structured output answers with it as written (raw text)."""
    if state.model.adapter.family.writes_segments:
        return replace(req, decode=replace(req.decode, raw_text=True))
    return req
