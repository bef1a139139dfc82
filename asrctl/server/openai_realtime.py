"""``/v1/realtime``: OpenAI's Realtime API, transcription sessions, over a WebSocket.

OpenAI's own event names, in both the GA spelling (``session.update``, ``session.created``,
``conversation.item.added``) and the beta one (``transcription_session.update``,
``transcription_session.created``, ``conversation.item.created``): the server answers in
the spelling the client uses. The official SDK's realtime client
(``client.realtime.connect(model=..., extra_query={"intent": "transcription"})``) works
unchanged.

Client → server: ``session.update`` / ``transcription_session.update`` (input format
``pcm16`` / ``audio/pcm`` at 24 kHz mono, transcription ``language`` and ``prompt``,
``turn_detection``: ``server_vad`` or null), ``input_audio_buffer.append`` (base64 PCM16 LE),
``input_audio_buffer.commit``, ``input_audio_buffer.clear``.

Server → client: with server VAD (the default), ``input_audio_buffer.speech_started``,
then ``conversation.item.input_audio_transcription.delta`` as the utterance is re-decoded
(only text two consecutive decodes agree on: deltas cannot be taken back),
and when silence ends it ``input_audio_buffer.speech_stopped``,
``input_audio_buffer.committed``, ``conversation.item.added`` and
``conversation.item.input_audio_transcription.completed`` (the authoritative transcript).
With ``turn_detection: null`` the client commits: everything appended since the last
commit is one item. Errors arrive as ``error`` events; the connection stays up.

The utterance machinery (endpointing, partial re-decoding, locking) is the one the FunASR
``/ws`` route and the library's ``ASR.stream`` use: :class:`asrctl.streaming.StreamingSession`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from asrctl.adapters.base import PromptOptions
from asrctl.audio import load_audio
from asrctl.pipeline import DecodeOptions
from asrctl.server.errors import ApiError
from asrctl.server.openai_api import MAX_PROMPT_CHARS, split_hotwords
from asrctl.server.realtime import live_session
from asrctl.server.state import ServerState
from asrctl.streaming import StreamingSession, StreamUpdate

log = logging.getLogger("asrctl.server")

ENDPOINT = "/v1/realtime"
PCM_RATE = 24000  # OpenAI's pcm16: 24 kHz mono little-endian
PCM16_FULL_SCALE = 32768.0
MAX_EVENT_BYTES = 1 << 20  # one append: ~21 s of 24 kHz PCM16, base64

router = APIRouter()


@router.websocket(ENDPOINT)
async def realtime(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.asr
    async with live_session(websocket, state, ENDPOINT) as admitted:
        if not admitted:
            return
        beta = websocket.query_params.get("intent") == "transcription" and (
            "model" not in websocket.query_params
        )
        session = TranscriptionSession(state, websocket, beta=beta)
        try:
            await session.run()
        except WebSocketDisconnect:
            pass
        except Exception:  # one session's failure must not reach the server
            log.exception("realtime session failed")
            with contextlib.suppress(Exception):
                await websocket.close(code=1011)
        finally:
            await session.stream.cancel_partial()


class TranscriptionSession:
    """One connection: OpenAI's transcription events around a StreamingSession."""

    def __init__(self, state: ServerState, websocket: WebSocket, *, beta: bool) -> None:
        self.state = state
        self.websocket = websocket
        self.beta = beta
        self.prompt = PromptOptions()
        self.server_vad = True
        self._send_lock = asyncio.Lock()
        self.stream = StreamingSession(
            self._decode,
            PCM_RATE,
            state.options.realtime,
            model_max_s=state.model.adapter.family.max_audio_seconds,
            on_update=self._on_update,
        )
        self.manual: list[np.ndarray] = []  # appended audio awaiting a commit (no VAD)
        self.item_id = _id("item")
        self.previous_item: str | None = None
        self.sent_partial = ""  # the open item's text sent as deltas
        self.last_partial = ""  # the open utterance's latest partial decode
        self.speaking = False
        self.locked = 0  # sentences already reported

    # -- the connection ------------------------------------------------------------------

    async def run(self) -> None:
        await self.send({"type": self._name("created"), "session": self._session()})
        idle = self.state.options.realtime.idle_timeout_s
        while True:
            try:
                text = await asyncio.wait_for(self.websocket.receive_text(), idle)
            except TimeoutError:
                await self.error("idle_timeout", f"idle for {idle:g} s: closing")
                await self.websocket.close(code=1001)
                return
            try:
                await self.handle(text)
            except ApiError as e:
                await self.error(e.code or "invalid_request", e.message, e.param)

    async def handle(self, text: str) -> None:
        if len(text) > MAX_EVENT_BYTES:
            raise ApiError(400, f"an event may hold at most {MAX_EVENT_BYTES} bytes")
        try:
            event = json.loads(text)
        except ValueError:
            raise ApiError(400, "events are JSON objects", code="invalid_json") from None
        kind = event.get("type") if isinstance(event, dict) else None
        if kind in ("session.update", "transcription_session.update"):
            self.beta = kind.startswith("transcription_session")
            self.configure(event.get("session"))
            await self.send({"type": self._name("updated"), "session": self._session()})
        elif kind == "input_audio_buffer.append":
            await self.append(event.get("audio"))
        elif kind == "input_audio_buffer.commit":
            await self.commit()
        elif kind == "input_audio_buffer.clear":
            await self.stream.cancel_partial()
            self.stream.reset()
            self.manual, self.sent_partial, self.last_partial = [], "", ""
            self.speaking, self.locked = False, 0
            await self.send({"type": "input_audio_buffer.cleared"})
        else:
            raise ApiError(400, f"unsupported event type {str(kind)[:60]!r}", param="type")

    # -- session settings ----------------------------------------------------------------

    def configure(self, session: Any) -> None:
        """Apply a session update (GA ``audio.input.*`` or beta top-level fields)."""
        if not isinstance(session, dict):
            raise ApiError(400, "session must be an object", param="session")
        audio_in = (session.get("audio") or {}).get("input") or {}
        fmt = audio_in.get("format", session.get("input_audio_format"))
        _check_format(fmt)
        transcription = audio_in.get("transcription", session.get("input_audio_transcription"))
        if isinstance(transcription, dict):
            language = self.state.language(transcription.get("language"))
            prompt_text = str(transcription.get("prompt") or "")
            if len(prompt_text) > MAX_PROMPT_CHARS:
                raise ApiError(400, f"prompt may hold at most {MAX_PROMPT_CHARS} characters")
            hotwords = split_hotwords(prompt_text) if self._takes_hotwords else ()
            prompt = PromptOptions(language=language, hotwords=hotwords)
            self.state.check_prompt(prompt, "session.audio.input.transcription")
            self.prompt = prompt
        keys = ("turn_detection",)
        if "turn_detection" in audio_in or any(k in session for k in keys):
            detection = audio_in.get("turn_detection", session.get("turn_detection"))
            self.server_vad = detection is not None
            if detection is not None and detection.get("type", "server_vad") != "server_vad":
                raise ApiError(
                    400,
                    f"turn_detection {detection.get('type')!r} is not available; "
                    "use server_vad or null",
                    param="turn_detection",
                )

    @property
    def _takes_hotwords(self) -> bool:
        return self.state.model.adapter.family.chat_text == "hotwords"

    def _session(self) -> dict[str, Any]:
        detection = {"type": "server_vad"} if self.server_vad else None
        transcription = {"model": self.state.names[0], "language": self.prompt.language}
        if self.beta:
            return {
                "id": _id("sess"),
                "object": "realtime.transcription_session",
                "input_audio_format": "pcm16",
                "input_audio_transcription": transcription,
                "turn_detection": detection,
            }
        return {
            "type": "transcription",
            "id": _id("sess"),
            "object": "realtime.session",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": PCM_RATE},
                    "transcription": transcription,
                    "turn_detection": detection,
                }
            },
        }

    # -- audio -----------------------------------------------------------------------------

    async def append(self, audio: Any) -> None:
        if not isinstance(audio, str):
            raise ApiError(400, "audio must be base64 PCM16", param="audio")
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "audio is not valid base64", param="audio") from None
        usable = len(data) - len(data) % 2
        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / PCM16_FULL_SCALE
        if not self.server_vad:
            self.manual.append(samples)
            return
        before = self.stream.endpointer.speech_start
        await self.stream.feed(samples)
        start = self.stream.endpointer.speech_start
        if start is not None and (before is None or not self.speaking):
            self.speaking = True
            await self.send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": round(start * 1000 / PCM_RATE),
                    "item_id": self.item_id,
                }
            )

    async def commit(self) -> None:
        """The client ends the turn: everything not yet transcribed is one item."""
        if self.server_vad:
            update = await self.stream.finish()
            await self._report_locked(update)
            self.stream.reset()
            self.locked = 0
            return
        audio = np.concatenate(self.manual) if self.manual else np.zeros(0, np.float32)
        self.manual = []
        if len(audio) == 0:
            raise ApiError(400, "the input audio buffer is empty", code="input_audio_buffer_empty")
        await self.send({"type": "input_audio_buffer.committed", **self._item_ids()})
        text = await self._decode(audio, None)
        await self._complete(text)

    async def _on_update(self, update: StreamUpdate) -> None:
        if len(update.sentences) > self.locked:
            await self._report_locked(update)
        elif update.partial:
            # deltas cannot be taken back: send only what two decodes in a row agree on
            stable = os.path.commonprefix([self.last_partial, update.partial])  # noqa: RUF071 (characters)
            self.last_partial = update.partial
            if stable.startswith(self.sent_partial) and len(stable) > len(self.sent_partial):
                delta = stable[len(self.sent_partial) :]
                self.sent_partial = stable
                await self.send(self._transcription("delta", delta=delta))

    async def _report_locked(self, update: StreamUpdate) -> None:
        for sentence in update.sentences[self.locked :]:
            end_ms = round(sentence.end * 1000)
            if not self.speaking:  # a turn whose start went unreported (commit mid-speech)
                await self.send(
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": round(sentence.start * 1000),
                        "item_id": self.item_id,
                    }
                )
            stopped = {"audio_end_ms": end_ms, "item_id": self.item_id}
            await self.send({"type": "input_audio_buffer.speech_stopped", **stopped})
            await self.send({"type": "input_audio_buffer.committed", **self._item_ids()})
            await self._complete(sentence.text)
        self.locked = len(update.sentences)

    async def _complete(self, text: str) -> None:
        item = {
            "id": self.item_id,
            "type": "message",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        added = "conversation.item.created" if self.beta else "conversation.item.added"
        await self.send({"type": added, "previous_item_id": self.previous_item, "item": item})
        rest = text[len(self.sent_partial) :] if text.startswith(self.sent_partial) else ""
        if rest:
            await self.send(self._transcription("delta", delta=rest))
        await self.send(self._transcription("completed", transcript=text))
        self.previous_item, self.item_id = self.item_id, _id("item")
        self.sent_partial, self.last_partial, self.speaking = "", "", False

    def _item_ids(self) -> dict[str, Any]:
        return {"previous_item_id": self.previous_item, "item_id": self.item_id}

    def _transcription(self, what: str, **fields: Any) -> dict[str, Any]:
        return {
            "type": f"conversation.item.input_audio_transcription.{what}",
            "item_id": self.item_id,
            "content_index": 0,
            **fields,
        }

    async def _decode(self, audio: np.ndarray, max_tokens: int | None) -> str:
        """Decode 24 kHz samples at the model's rate (resampled where it differs)."""
        rate = self.state.model.sample_rate
        if rate != PCM_RATE and len(audio):
            audio = load_audio(audio, sample_rate=rate, key="realtime audio", source_rate=PCM_RATE)
        try:
            result = await self.state.transcribe(
                ENDPOINT, audio, self.prompt, DecodeOptions(max_tokens=max_tokens)
            )
        except ApiError as e:
            await self.error(e.code or "transcription_failed", e.message, e.param)
            return ""
        return result.text

    # -- sending -----------------------------------------------------------------------------

    def _name(self, what: str) -> str:
        return f"transcription_session.{what}" if self.beta else f"session.{what}"

    async def error(self, code: str, message: str, param: str | None = None) -> None:
        error = {"type": "invalid_request_error", "code": code, "message": message, "param": param}
        await self.send({"type": "error", "error": error})

    async def send(self, event: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.websocket.send_text(
                json.dumps({"event_id": _id("event"), **event}, ensure_ascii=False)
            )


def _check_format(fmt: Any) -> None:
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    rate = fmt.get("rate", PCM_RATE) if isinstance(fmt, dict) else PCM_RATE
    if kind not in (None, "pcm16", "audio/pcm") or rate != PCM_RATE:
        raise ApiError(
            400,
            f"input audio format {kind!r} at {rate} Hz is not available; send pcm16 "
            f"(audio/pcm) at {PCM_RATE} Hz",
            param="input_audio_format",
            code="unsupported_audio_format",
        )


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"
