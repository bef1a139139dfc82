"""``/ws``: live transcription over a WebSocket, in FunASR's realtime protocol.

Client → server: text ``START``, optional ``LANGUAGE:zh`` and ``HOTWORDS:a,b``, binary
frames of PCM16 little-endian mono audio at the model's rate (16 kHz), text ``STOP``.

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
utterance it is decoded once more, in full, and locked as a sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import numpy as np
from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from asrctl.adapters.base import PromptOptions
from asrctl.server.endpointing import make_endpointer
from asrctl.server.engine import DecodeOptions
from asrctl.server.errors import ApiError, error_body
from asrctl.server.openai_api import MAX_PROMPT_CHARS
from asrctl.server.state import ServerState

log = logging.getLogger("asrctl.server")

ENDPOINT = "/ws"
MIN_DECODE_S = 0.1  # shorter stretches are not worth a decode
PCM16_FULL_SCALE = 32768.0

router = APIRouter()


@router.websocket(ENDPOINT)
async def realtime(websocket: WebSocket) -> None:
    state: ServerState = websocket.app.state.asr
    metrics = state.metrics
    if not state.authorized(websocket.headers, websocket.query_params):
        metrics.requests.labels(ENDPOINT, "401").inc()
        body = error_body(401, "missing or invalid API key", code="invalid_api_key")
        await websocket.send_denial_response(JSONResponse(body, status_code=401))
        return
    await websocket.accept()
    metrics.requests.labels(ENDPOINT, "101").inc()
    metrics.ws_sessions.inc()
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
        await session.cancel_partial()
        metrics.ws_sessions.dec()


class RealtimeSession:
    """One connection's audio, endpointer, locked sentences and partial text."""

    def __init__(self, state: ServerState, websocket: WebSocket) -> None:
        self.state = state
        self.websocket = websocket
        self.options = state.options.realtime
        self.rate = state.model.sample_rate
        self.prompt = PromptOptions()
        self._send_lock = asyncio.Lock()
        self._partial_task: asyncio.Task | None = None
        self.reset()

    def reset(self) -> None:
        family = self.state.model.adapter.family
        self.endpointer = make_endpointer(self.options, self.rate, family.max_audio_seconds)
        self.active = False
        self.warned = False
        self.audio = np.zeros(0, dtype=np.float32)  # kept samples
        self.audio_start = 0  # stream index of self.audio[0]
        self.total = 0  # samples received
        self.odd_byte = b""
        self.sentences: list[dict] = []
        self.partial = ""
        self.partial_start = 0
        self.utterance = 0  # bumped at each lock; stale partials are dropped
        self.decoded_to: int | None = None  # stream index of the last partial decode

    async def run(self) -> None:
        while True:
            message = await self.websocket.receive()
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
            await self.cancel_partial()
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
                await self.send(await self.finish())
            self.active = False
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
        self.audio = np.concatenate([self.audio, samples])
        self.total += len(samples)
        ended = self.endpointer.feed(samples)
        for start, end in ended:
            await self.lock(start, end)
        if ended:
            await self.send(self.result(is_final=False))
        self._trim()
        self._maybe_partial()

    async def finish(self) -> dict:
        """STOP: lock the utterance in progress and return the final result."""
        await self.cancel_partial()
        for start, end in self.endpointer.flush():
            await self.lock(start, end)
        return self.result(is_final=True)

    async def lock(self, start: int, end: int) -> None:
        """Decode a closed utterance in full and add it to the sentences."""
        await self.cancel_partial()
        self.utterance += 1
        self.partial, self.decoded_to = "", None
        text = await self._decode(start, end, max_tokens=None)
        if text:
            self.sentences.append({"text": text, "start": self._ms(start), "end": self._ms(end)})

    def result(self, *, is_final: bool) -> dict:
        """A result message; ``partial_start_ms`` is where the open utterance (if any)
        began, else the end of the audio so far, as in FunASR."""
        if is_final:
            partial, partial_start = "", 0
        elif self.partial:
            partial, partial_start = self.partial, self._ms(self.partial_start)
        else:
            start = self.endpointer.speech_start
            partial, partial_start = "", self._ms(self.total if start is None else start)
        return {
            "sentences": list(self.sentences),
            "partial": partial,
            "partial_start_ms": partial_start,
            "duration_ms": self._ms(self.total),
            "is_final": is_final,
        }

    async def send(self, message: dict) -> None:
        async with self._send_lock:
            await self.websocket.send_text(json.dumps(message, ensure_ascii=False))

    async def cancel_partial(self) -> None:
        task, self._partial_task = self._partial_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

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
            if utterance == self.utterance and self.active:
                self.partial, self.partial_start = text, start
                await self.send(self.result(is_final=False))
        except Exception:  # the socket went away mid-decode: the session loop ends it
            log.debug("partial decode dropped", exc_info=True)

    async def _decode(self, start: int, end: int, *, max_tokens: int | None) -> str:
        lo = max(0, start - self.audio_start)
        audio = self.audio[lo : max(lo, end - self.audio_start)]
        if len(audio) < MIN_DECODE_S * self.rate:
            return ""
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

    def _trim(self) -> None:
        """Drop audio no utterance can still need (the open one, or the padding ahead)."""
        start = self.endpointer.speech_start
        keep = self.options.speech_pad_s + self.options.min_speech_s + 0.1
        keep_from = start if start is not None else self.total - round(keep * self.rate)
        drop = min(max(0, keep_from - self.audio_start), len(self.audio))
        if drop:
            self.audio = self.audio[drop:].copy()  # a view would keep the old buffer alive
            self.audio_start += drop

    def _ms(self, samples: int) -> int:
        return round(samples * 1000 / self.rate)
