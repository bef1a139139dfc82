"""``/ws``: live transcription over a WebSocket, in FunASR's realtime protocol.

Client → server: text ``START``, optional ``LANGUAGE:zh`` and ``HOTWORDS:a,b``, binary
frames of PCM16 little-endian mono audio at 16 kHz (whatever the model's rate), text ``STOP``.

Server → client (``funasr-realtime-server``'s shapes):

* ``{"event": "started"}``, ``{"event": "language_set", "language": ...}``,
  ``{"event": "hotwords_set", "hotwords": [...]}``, ``{"event": "stopped"}``,
  ``{"event": "error", "error": ...}``;
* results ``{"sentences": [{"text", "start", "end"}], "partial", "partial_start_ms",
  "duration_ms", "is_final"}`` (times in ms): ``sentences`` holds every sentence locked so
  far, ``partial`` the utterance in progress. The last, after ``STOP``, has
  ``is_final: true``.

While an utterance is open, it is re-decoded from its start (cumulative re-encoding, as
FunASR does) once ``first_partial_s`` of it has arrived and then every
``partial_interval_s`` of new audio; one partial decode runs at a time per session, and
sessions share the engine's batching with HTTP requests. When the endpointer closes the
utterance it is decoded once more, in full, and locked as a sentence. That logic lives in
:class:`asrctl.streaming.StreamingSession` (shared with the library's ``ASR.stream``); this
module is the transport: the protocol, PCM16 decoding, resampling 16 kHz PCM to the model's
rate (VibeVoice-ASR: 24 kHz), the session cap (``max_sessions``: more are refused with 503
before the upgrade) and the idle timeout (``idle_timeout_s`` without a message: an error
event, then close code 1001).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from asrctl.adapters.base import PromptOptions
from asrctl.audio import load_audio
from asrctl.server.engine import DecodeOptions
from asrctl.server.errors import ApiError, error_body
from asrctl.server.openai_api import MAX_PROMPT_CHARS
from asrctl.server.state import ServerState
from asrctl.streaming import StreamingSession, StreamUpdate

log = logging.getLogger("asrctl.server")

ENDPOINT = "/ws"
PCM_RATE = 16000  # the protocol's PCM rate, whatever the model's
PCM16_FULL_SCALE = 32768.0
IDLE_CLOSE_CODE = 1001  # "going away"

router = APIRouter()


@router.websocket(ENDPOINT)
@router.websocket("/")  # FunASR's realtime clients connect to the server's root
async def realtime(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.asr
    async with live_session(websocket, state, ENDPOINT) as admitted:
        if admitted:
            await _run_session(state, websocket)


@contextlib.asynccontextmanager
async def live_session(
    websocket: WebSocket, state: ServerState, endpoint: str
) -> AsyncIterator[bool]:
    """Admit a WebSocket session (its key, the server's session cap) and count it while it
    lives; yields False when it was refused (the refusal already sent)."""
    metrics = state.metrics
    if not state.authorized(websocket.headers, websocket.query_params):
        metrics.requests.labels(endpoint, "401").inc()
        body = error_body(401, "missing or invalid API key", code="invalid_api_key")
        await websocket.send_denial_response(JSONResponse(body, status_code=401))
        yield False
        return
    app_state = websocket.app.state
    open_sessions = getattr(app_state, "ws_open", 0)
    cap = state.options.realtime.max_sessions
    if cap is not None and open_sessions >= cap:
        metrics.requests.labels(endpoint, "503").inc()
        message = f"too many live sessions (at most {cap}); try again later"
        body = error_body(503, message, code="too_many_sessions")
        await websocket.send_denial_response(JSONResponse(body, status_code=503))
        yield False
        return
    app_state.ws_open = open_sessions + 1  # no await since the read: no race
    try:
        await websocket.accept()
        metrics.requests.labels(endpoint, "101").inc()
        metrics.ws_sessions.inc()
        try:
            yield True
        finally:
            metrics.ws_sessions.dec()
    finally:
        app_state.ws_open -= 1


async def _run_session(state: ServerState, websocket: WebSocket) -> None:
    session = RealtimeSession(state, websocket)
    try:
        await session.run()
    except WebSocketDisconnect:
        pass
    except Exception as e:  # one session's failure must not reach the server
        log.exception("websocket session failed")
        with contextlib.suppress(Exception):
            await session.send({"event": "error", "error": f"internal error: {e}"})
            await websocket.close(code=1011)
    finally:
        await session.stream.cancel_partial()


class RealtimeSession:
    """One connection: the protocol around a :class:`~asrctl.streaming.StreamingSession`."""

    def __init__(self, state: ServerState, websocket: WebSocket) -> None:
        self.state = state
        self.websocket = websocket
        self.options = state.options.realtime
        self.prompt = PromptOptions()
        self._send_lock = asyncio.Lock()
        self.stream = StreamingSession(
            self._decode,
            PCM_RATE,
            self.options,
            model_max_s=state.model.adapter.family.max_audio_seconds,
            on_update=self._send_update,
        )
        self.reset()

    def reset(self) -> None:
        self.stream.reset()
        self.active = False
        self.warned = False
        self.odd_byte = b""

    async def run(self) -> None:
        idle = self.options.idle_timeout_s
        while True:
            try:
                message = await asyncio.wait_for(self.websocket.receive(), idle)
            except TimeoutError:
                await self.send({"event": "error", "error": f"idle for {idle:g} s: closing"})
                await self.websocket.close(code=IDLE_CLOSE_CODE)
                return
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await self.command(message["text"])
            elif message.get("bytes") is not None:
                await self.feed(message["bytes"])

    async def command(self, text: str) -> None:
        command, _, value = text.strip().partition(":")
        command = command.strip().upper()
        if command == "START":
            await self.stream.cancel_partial()
            self.reset()  # keeps LANGUAGE/HOTWORDS sent before START
            self.active = True
            await self.send({"event": "started"})
        elif command == "LANGUAGE":
            language = value.strip() or None
            if await self._set_prompt(PromptOptions(language, self.prompt.hotwords)):
                await self.send({"event": "language_set", "language": value.strip()})
        elif command == "HOTWORDS":
            if len(value) > MAX_PROMPT_CHARS:
                await self.send(
                    {
                        "event": "error",
                        "error": f"at most {MAX_PROMPT_CHARS} characters of hotwords",
                    }
                )
                return
            words = tuple(w.strip() for w in value.split(",") if w.strip())
            if await self._set_prompt(PromptOptions(self.prompt.language, words)):
                await self.send({"event": "hotwords_set", "hotwords": list(words)})
        elif command == "STOP":
            if self.active:
                self.active = False
                await self.send(message(await self.stream.finish()))
            await self.send({"event": "stopped"})
        else:
            await self.send({"event": "error", "error": f"unknown command {text.strip()[:40]!r}"})

    async def feed(self, data: bytes) -> None:
        if not self.active:
            if not self.warned:
                self.warned = True
                await self.send({"event": "error", "error": "send START before audio"})
            return
        data = self.odd_byte + data
        whole = len(data) - len(data) % 2
        self.odd_byte = data[whole:]
        samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / PCM16_FULL_SCALE
        await self.stream.feed(samples)

    async def send(self, message: dict) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(message, ensure_ascii=False))

    async def _send_update(self, update: StreamUpdate) -> None:
        if self.active:
            await self.send(message(update))

    async def _decode(self, audio: np.ndarray, max_tokens: int | None) -> str:
        """Decode 16 kHz samples at the model's rate (resampled where it differs)."""
        rate = self.state.model.sample_rate
        if rate != PCM_RATE:
            audio = load_audio(audio, sample_rate=rate, key="ws audio", source_rate=PCM_RATE)
        began = time.perf_counter()
        try:
            result = await self.state.transcribe(
                ENDPOINT, audio, self.prompt, DecodeOptions(max_tokens=max_tokens)
            )
        except ApiError as e:
            await self.send({"event": "error", "error": e.message})
            return ""
        self.state.metrics.latency.labels(ENDPOINT).observe(time.perf_counter() - began)
        return result.text

    async def _set_prompt(self, prompt: PromptOptions) -> bool:
        try:
            self.state.check_prompt(prompt, "prompt")
        except ApiError as e:
            await self.send({"event": "error", "error": e.message})
            return False
        self.prompt = prompt
        return True


def message(update: StreamUpdate) -> dict:
    """A result message in FunASR's shape (times in ms)."""
    return {
        "sentences": [
            {"text": s.text, "start": _ms(s.start), "end": _ms(s.end)} for s in update.sentences
        ],
        "partial": update.partial,
        "partial_start_ms": _ms(update.partial_start),
        "duration_ms": _ms(update.duration),
        "is_final": update.is_final,
    }


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
