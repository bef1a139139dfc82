"""Load test of a running transcription server: OpenAI HTTP endpoint and ``/ws`` live audio.

HTTP: ``POST {URL}/v1/audio/transcriptions`` (multipart ``file``, ``model``,
``response_format=json``, optional ``language``), with httpx on asyncio.

* closed loop: ``concurrency`` workers, each sending its next request as soon as the
  previous one is answered, until ``requests`` have been sent or the level's time limit
  has passed;
* Poisson (``rate``): ``requests`` arrivals with exponential gaps (seeded), each sent at
  its time whatever is in flight (at most ``MAX_OPEN_CONNECTIONS`` connections; beyond
  that, waiting for a connection counts in the latency).

Latency is measured at the client, from just before the request is sent to the parsed
response. RTFx = seconds of audio answered successfully / the level's wall time (first
request sent to last answer). Errors are counted by HTTP status or transport error.

WebSocket (FunASR-style, issue 5): per session, ``START`` (then ``LANGUAGE:xx``), binary
PCM16 16 kHz mono frames of ``frame_ms``, each sent when its audio would have been fully
captured (paced in real time), then ``STOP``. Messages are JSON; one with a non-empty
``partial`` or ``text`` or ``sentences`` before the final counts as a partial, one with
``is_final: true`` (or ``type: "final"``) is the final. Reported: time to first partial
(from the first frame sent) and time to final (from ``STOP``).

Only the URL the user gives is contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from asrctl.errors import AsrctlError, OptionsError
from asrctl.inputs import AudioItem

ENDPOINT = "/v1/audio/transcriptions"
WS_PATH = "/ws"
WS_RATE = 16000  # Hz of the PCM16 frames sent to /ws
MAX_OPEN_CONNECTIONS = 512  # Poisson mode's connection pool
MAX_REQUESTS = 100_000  # hard cap per level
PERCENTILES = (50, 95, 99)
ERROR_BODY_CHARS = 200


@dataclass(frozen=True)
class Clip:
    key: str
    data: bytes  # the file as uploaded
    filename: str
    duration_s: float
    pcm16: bytes = b""  # 16 kHz mono little-endian PCM16, for /ws


@dataclass(frozen=True)
class LoadOptions:
    """A load test's settings.

    Attributes:
        url: server base URL (``http://127.0.0.1:8000``).
        model: the ``model`` form field (None: the first id of ``GET /v1/models``).
        concurrency: closed-loop levels (workers, or live sessions with ``ws``).
        rate: Poisson arrival rates, requests per second, one level each.
        requests: requests per level (None: max(number of clips, 4 × concurrency)).
        warmup: requests sent one at a time, untimed, before the first level.
        timeout_s: per request (per session with ``ws``).
        time_limit_s: per level; no new request starts after it.
        ws: stream to ``/ws`` instead of posting files.
    """

    url: str
    model: str | None = None
    concurrency: tuple[int, ...] = (1, 8, 32, 128)
    rate: tuple[float, ...] = ()
    requests: int | None = None
    warmup: int = 2
    timeout_s: float = 120.0
    time_limit_s: float = 300.0
    api_key: str | None = None
    language: str | None = None
    ws: bool = False
    frame_ms: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OptionsError(f"--server needs an http(s) URL, got {self.url!r}")
        if any(c < 1 for c in self.concurrency) or any(r <= 0 for r in self.rate):
            raise OptionsError("--concurrency values must be >= 1 and --rate values > 0")
        if self.ws and self.rate:
            raise OptionsError("--rate applies to HTTP requests, not to --ws sessions")
        if not self.concurrency and not self.rate:
            raise OptionsError("give --concurrency levels or a --rate")
        if self.requests is not None and not 1 <= self.requests <= MAX_REQUESTS:
            raise OptionsError(f"--requests must be between 1 and {MAX_REQUESTS}")


@dataclass(frozen=True)
class Request:
    key: str
    start_s: float  # since the level started
    latency_s: float
    audio_s: float
    status: str  # "200", "500", "timeout", "ConnectError", "bad-response", "no-final", ...
    text: str | None = None
    detail: str | None = None  # start of an error body, or the server's ws error
    first_partial_s: float | None = None  # ws: first frame sent → first partial
    final_after_stop_s: float | None = None  # ws: STOP sent → final

    @property
    def ok(self) -> bool:
        return self.status == "200"


@dataclass(frozen=True)
class Level:
    mode: str  # "closed" | "poisson" | "ws"
    concurrency: int | None
    rate: float | None
    wall_s: float
    requests: tuple[Request, ...]

    @property
    def label(self) -> str:
        if self.mode == "poisson":
            return f"rate {self.rate:g}/s"
        return f"{'ws ' if self.mode == 'ws' else ''}c={self.concurrency}"

    def to_json(self) -> dict:
        ok = [r for r in self.requests if r.ok]
        audio = sum(r.audio_s for r in ok)
        out = {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "requests": len(self.requests),
            "ok": len(ok),
            "errors": dict(Counter(r.status for r in self.requests if not r.ok)),
            "error_examples": _examples(self.requests),
            "wall_s": round(self.wall_s, 4),
            "requests_per_s": round(len(ok) / self.wall_s, 3) if self.wall_s else None,
            "audio_s": round(audio, 3),
            "rtfx": round(audio / self.wall_s, 2) if self.wall_s else None,
            "latency_s": percentiles([r.latency_s for r in ok]),
        }
        if self.mode == "ws":
            out["first_partial_s"] = percentiles(
                [r.first_partial_s for r in ok if r.first_partial_s is not None]
            )
            out["final_after_stop_s"] = percentiles(
                [r.final_after_stop_s for r in ok if r.final_after_stop_s is not None]
            )
        return out


def _examples(requests: Sequence[Request]) -> dict[str, str]:
    """The first error detail seen for each failing status."""
    out: dict[str, str] = {}
    for r in requests:
        if not r.ok and r.detail and r.status not in out:
            out[r.status] = r.detail
    return out


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    out: dict[str, float | None]
    if not values:
        out = {f"p{p}": None for p in PERCENTILES}
        return out | {"mean": None}
    arr = np.asarray(values, dtype=float)
    out = {f"p{p}": round(float(np.percentile(arr, p)), 4) for p in PERCENTILES}
    return out | {"mean": round(float(arr.mean()), 4)}


def load_clips(items: Sequence[AudioItem], *, pcm: bool) -> list[Clip]:
    """Files as they are on disk (segments and pipes re-encoded as 16 kHz wav)."""
    import soundfile as sf

    clips = []
    for item in items:
        audio = item.load(WS_RATE)
        duration = len(audio) / WS_RATE
        pcm16 = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes() if pcm else b""
        if item.kind == "path" and not item.is_segment:
            path = Path(str(item.source))
            data, name = path.read_bytes(), path.name
        else:
            buf = io.BytesIO()
            sf.write(buf, audio, WS_RATE, format="WAV", subtype="PCM_16")
            data, name = buf.getvalue(), f"{item.key}.wav"
        clips.append(Clip(item.key, data, name, duration, pcm16))
    if not clips:
        raise AsrctlError("no audio to send")
    return clips


def run_load_test(options: LoadOptions, clips: Sequence[Clip], on_level=None) -> list[Level]:
    """Run every level in turn (blocking); ``on_level(level)`` is called after each."""
    return asyncio.run(_run(options, list(clips), on_level or (lambda _lvl: None)))


async def _run(options: LoadOptions, clips: list[Clip], on_level) -> list[Level]:
    import httpx

    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    async with httpx.AsyncClient(
        base_url=options.url.rstrip("/"),
        headers=headers,
        timeout=options.timeout_s,
        limits=httpx.Limits(max_connections=MAX_OPEN_CONNECTIONS),
    ) as client:
        model = options.model or await _first_model(client)
        for clip in itertools.islice(itertools.cycle(clips), options.warmup):
            if options.ws:
                await _ws_session(options, clip, time.perf_counter())
            else:
                await _post(client, options, model, clip, time.perf_counter())
        levels = []
        for c in options.concurrency:
            n = options.requests or max(len(clips), 4 * c)
            levels.append(await _closed(client, options, model, clips, c, n))
            on_level(levels[-1])
        for rate in options.rate:
            n = options.requests or max(len(clips), 4 * round(rate))
            levels.append(await _poisson(client, options, model, clips, rate, n))
            on_level(levels[-1])
    return levels


async def _first_model(client) -> str:
    import httpx

    try:
        response = await client.get("/v1/models")
        return str(response.json()["data"][0]["id"])
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:
        raise AsrctlError(
            f"cannot list the server's models (GET /v1/models: {e or type(e).__name__})",
            hint="pass --server-model NAME",
        ) from e


async def _closed(client, options, model, clips, concurrency: int, n: int) -> Level:
    counter = itertools.count()
    t0 = time.perf_counter()
    deadline = t0 + options.time_limit_s
    done: list[Request] = []

    async def worker() -> None:
        while (i := next(counter)) < n and time.perf_counter() < deadline:
            clip = clips[i % len(clips)]
            if options.ws:
                done.append(await _ws_session(options, clip, t0))
            else:
                done.append(await _post(client, options, model, clip, t0))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    mode = "ws" if options.ws else "closed"
    return Level(mode, concurrency, None, time.perf_counter() - t0, tuple(done))


async def _poisson(client, options, model, clips, rate: float, n: int) -> Level:
    gaps = np.random.default_rng(options.seed).exponential(1.0 / rate, n)
    arrivals = [a for a in np.cumsum(gaps) if a < options.time_limit_s]
    t0 = time.perf_counter()

    async def one(i: int, at: float) -> Request:
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        return await _post(client, options, model, clips[i % len(clips)], t0)

    done = await asyncio.gather(*(one(i, float(a)) for i, a in enumerate(arrivals)))
    return Level("poisson", None, rate, time.perf_counter() - t0, tuple(done))


async def _post(client, options: LoadOptions, model: str, clip: Clip, t0: float) -> Request:
    import httpx

    form = {"model": model, "response_format": "json"}
    if options.language:
        form["language"] = options.language
    start = time.perf_counter()
    text = detail = None
    try:
        response = await client.post(
            ENDPOINT, files={"file": (clip.filename, clip.data)}, data=form
        )
        status = str(response.status_code)
        if response.status_code != 200:
            detail = response.text[:ERROR_BODY_CHARS]
        else:
            text = response.json().get("text")
            if not isinstance(text, str):
                status, detail = "bad-response", response.text[:ERROR_BODY_CHARS]
    except httpx.TimeoutException:
        status = "timeout"
    except httpx.HTTPError as e:
        status, detail = type(e).__name__, str(e)[:ERROR_BODY_CHARS]
    except (ValueError, AttributeError):
        status = "bad-response"
    latency = time.perf_counter() - start
    return Request(clip.key, start - t0, latency, clip.duration_s, status, text, detail)


def ws_url(url: str) -> str:
    parts = urlsplit(url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path}{WS_PATH}"


async def _ws_session(options: LoadOptions, clip: Clip, t0: float) -> Request:
    try:
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException
    except ImportError as e:
        raise AsrctlError("--ws needs the websockets package", hint="pip install websockets") from e
    start = time.perf_counter()
    state: dict = {}
    try:
        async with asyncio.timeout(options.timeout_s + clip.duration_s):
            headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else None
            async with connect(
                ws_url(options.url), additional_headers=headers, max_size=None
            ) as ws:
                receiver = asyncio.create_task(_receive(ws, state))
                await _stream(ws, options, clip, state)
                await receiver
        status = "200" if "final" in state else ("ws-error" if "error" in state else "no-final")
    except TimeoutError:
        status = "timeout"
    except (OSError, WebSocketException) as e:
        status = type(e).__name__
        state.setdefault("error", str(e)[:ERROR_BODY_CHARS])
    latency = time.perf_counter() - start
    first = state.get("partial", state.get("final"))
    return Request(
        clip.key,
        start - t0,
        latency,
        clip.duration_s,
        status,
        state.get("text"),
        state.get("error"),
        first_partial_s=None if first is None else first - state.get("first_frame", start),
        final_after_stop_s=state["final"] - state["stop"] if "final" in state else None,
    )


async def _stream(ws, options: LoadOptions, clip: Clip, state: dict) -> None:
    """START, frames paced in real time, STOP."""
    await ws.send("START")
    if options.language:
        await ws.send(f"LANGUAGE:{options.language}")
    step = WS_RATE * options.frame_ms // 1000 * 2  # bytes per frame
    begin = time.perf_counter()
    for i, at in enumerate(range(0, len(clip.pcm16), step)):
        frame = clip.pcm16[at : at + step]
        ready = begin + (at + len(frame)) / 2 / WS_RATE  # when the frame is fully captured
        await asyncio.sleep(max(0.0, ready - time.perf_counter()))
        await ws.send(frame)
        if i == 0:
            state["first_frame"] = time.perf_counter()
    state.setdefault("first_frame", time.perf_counter())
    await ws.send("STOP")
    state["stop"] = time.perf_counter()


async def _receive(ws, state: dict) -> None:
    async for raw in ws:
        now = time.perf_counter()
        with contextlib.suppress(ValueError):
            msg = json.loads(raw)
            if not isinstance(msg, dict):
                continue
            if msg.get("error"):
                state["error"] = str(msg["error"])[:ERROR_BODY_CHARS]
                return
            if msg.get("is_final") or msg.get("type") == "final":
                state["final"] = now
                state["text"] = _message_text(msg)
                return
            if "partial" not in state and (_message_text(msg) or msg.get("partial")):
                state["partial"] = now


def _message_text(msg: dict) -> str:
    sentences = msg.get("sentences") or []
    locked = "".join(s.get("text", "") for s in sentences if isinstance(s, dict))
    return locked + str(msg.get("partial") or msg.get("text") or "")
