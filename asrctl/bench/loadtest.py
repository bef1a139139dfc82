"""Load test of a running transcription server: OpenAI HTTP endpoint and ``/ws`` live audio.

HTTP: ``POST {URL}/v1/audio/transcriptions`` (multipart ``file``, ``model``,
``response_format=json``, optional ``language``), with httpx on asyncio.

* closed loop: ``concurrency`` workers, each sending its next request as soon as the
  previous one is answered, until ``requests`` have been sent or the level's time limit
  has passed;
* Poisson (``rate``): ``requests`` arrivals with exponential gaps (seeded), each sent at
  its time whatever is in flight (at most ``MAX_OPEN_CONNECTIONS`` connections; beyond
  that, waiting for a connection counts in the latency).

The client must not be what limits the server: each closed-loop worker has its own
connection (httpx's shared pool scans every connection for each request, which cost
~4 ms of CPU per request at 128 connections), the multipart body of each clip is built
once, and every level reports the client process's CPU use (``client_cpu``: near 1.0 means
the client, not the server, was the limit).

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
import math
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
MAX_OPEN_CONNECTIONS = 512  # Poisson mode's connections, over POISSON_CLIENTS clients
POISSON_CLIENTS = 32
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
        tokens_per_second: fixed work, for random-weight checkpoints (which rarely stop):
            each posted request asks for exactly ceil(this x its seconds) tokens
            (``max_tokens`` and ``ignore_eos``), as ``transcribe``'s benchmark option.
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
    tokens_per_second: float | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise OptionsError(f"--server needs an http(s) URL, got {self.url!r}")
        if any(c < 1 for c in self.concurrency) or any(r <= 0 for r in self.rate):
            raise OptionsError("--concurrency values must be >= 1 and --rate values > 0")
        if self.tokens_per_second is not None and (self.ws or not self.tokens_per_second > 0):
            raise OptionsError("--tokens-per-second must be > 0 and applies to HTTP requests")
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
    cpu_s: float | None = None  # the client process's CPU seconds during the level

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
            "client_cpu": round(self.cpu_s / self.wall_s, 3)
            if self.cpu_s is not None and self.wall_s
            else None,
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


@dataclass(frozen=True)
class _Upload:
    """A clip's request body, built once: multipart ``file``, ``model``, ``response_format``
    (and ``language``)."""

    clip: Clip
    body: bytes
    content_type: str


def _uploads(clips: Sequence[Clip], options: LoadOptions, model: str) -> list[_Upload]:
    import httpx

    form = {"model": model, "response_format": "json"}
    if options.language:
        form["language"] = options.language
    out = []
    for clip in clips:
        fields = form
        if options.tokens_per_second is not None:
            tokens = max(1, math.ceil(options.tokens_per_second * clip.duration_s))
            fields = form | {"max_tokens": str(tokens), "ignore_eos": "true"}
        request = httpx.Request(
            "POST", "http://x/", files={"file": (clip.filename, clip.data)}, data=fields
        )
        out.append(_Upload(clip, request.read(), request.headers["content-type"]))
    return out


class _Clients:
    """httpx clients with small pools (see the module's notes): closed-loop worker ``i``
    uses ``clients[i]`` (one connection); Poisson requests spread over :meth:`spread`."""

    def __init__(self, options: LoadOptions) -> None:
        import httpx

        self.options = options
        self._workers: list = []
        self._spread: list = []
        self._tls = httpx.create_ssl_context()  # once: loading the CA store takes ~50 ms

    def __getitem__(self, i: int):
        while len(self._workers) <= i:
            self._workers.append(self._new(1))
        return self._workers[i]

    def spread(self) -> list:
        """:data:`POISSON_CLIENTS` clients, :data:`MAX_OPEN_CONNECTIONS` connections in all."""
        if not self._spread:
            per = MAX_OPEN_CONNECTIONS // POISSON_CLIENTS
            self._spread = [self._new(per) for _ in range(POISSON_CLIENTS)]
        return self._spread

    def _new(self, connections: int):
        import httpx

        key = self.options.api_key
        return httpx.AsyncClient(
            base_url=self.options.url.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=self.options.timeout_s,
            limits=httpx.Limits(max_connections=connections),
            verify=self._tls,
        )

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._workers + self._spread))


async def _run(options: LoadOptions, clips: list[Clip], on_level) -> list[Level]:
    clients = _Clients(options)
    try:
        model = options.model or await _first_model(clients[0])
        uploads = [] if options.ws else _uploads(clips, options, model)
        for i in range(options.warmup):
            if options.ws:
                await _ws_session(options, clips[i % len(clips)], time.perf_counter())
            else:
                await _post(clients[0], uploads[i % len(uploads)], time.perf_counter())
        levels = []
        for c in options.concurrency:
            n = options.requests or max(len(clips), 4 * c)
            levels.append(await _closed(clients, options, clips, uploads, c, n))
            on_level(levels[-1])
        for rate in options.rate:
            n = options.requests or max(len(clips), 4 * round(rate))
            levels.append(await _poisson(clients, options, uploads, rate, n))
            on_level(levels[-1])
    finally:
        await clients.aclose()
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


async def _closed(clients, options, clips, uploads, concurrency: int, n: int) -> Level:
    counter = itertools.count()
    own = [None if options.ws else clients[w] for w in range(concurrency)]  # made untimed
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + options.time_limit_s
    done: list[Request] = []

    async def worker(w: int) -> None:
        while (i := next(counter)) < n and time.perf_counter() < deadline:
            if options.ws:
                done.append(await _ws_session(options, clips[i % len(clips)], t0))
            else:
                done.append(await _post(own[w], uploads[i % len(uploads)], t0))

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    mode = "ws" if options.ws else "closed"
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Level(mode, concurrency, None, wall, tuple(done), cpu)


async def _poisson(clients, options, uploads, rate: float, n: int) -> Level:
    gaps = np.random.default_rng(options.seed).exponential(1.0 / rate, n)
    arrivals = [a for a in np.cumsum(gaps) if a < options.time_limit_s]
    pool = clients.spread()  # made untimed
    cpu0, t0 = time.process_time(), time.perf_counter()

    async def one(i: int, at: float) -> Request:
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        return await _post(pool[i % len(pool)], uploads[i % len(uploads)], t0)

    done = await asyncio.gather(*(one(i, float(a)) for i, a in enumerate(arrivals)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return Level("poisson", None, rate, wall, tuple(done), cpu)


async def _post(client, upload: _Upload, t0: float) -> Request:
    import httpx

    clip = upload.clip
    start = time.perf_counter()
    text = detail = None
    try:
        response = await client.post(
            ENDPOINT, content=upload.body, headers={"Content-Type": upload.content_type}
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
