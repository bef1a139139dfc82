"""Load and faults against a running server (issue 18, deliverable 4).

A few hundred good and bad requests at once (48 in flight) on both upload routes, while
WebSocket sessions stream audio and are dropped mid-stream (connection aborted, or
closed without STOP). Every request gets exactly the answer its input calls for (a good
upload its own transcript, a bad one its own 4xx), none is lost, the server's gauges
(WebSocket sessions, requests in progress) fall back to 0 and its memory stays bounded
over repeated rounds. The model is ``test_server``'s stand-in (it answers ``heard N
samples``), the HTTP stack and the decoding are real (``threadserver``).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import websockets
from media import encoded, pyav_encode
from test_server import KEY, SR, wav_bytes

# test_server's AUTH dict is not used: Starlette's TestClient.websocket_connect adds its
# own handshake headers to the dict it is given
AUTH = {"Authorization": f"Bearer {KEY}"}
CONCURRENCY = 48
REQUESTS = 300
WS_SESSIONS = 24
ROUNDS = 3  # the first warms up; memory is compared between the later ones
MAX_GROWTH_MB = 150  # RSS growth allowed from the end of round 1 to the end of the last
TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Case:
    name: str
    route: str
    data: bytes
    fields: dict
    headers: dict
    status: int
    text: str | None = None  # the exact transcript of a 200 (None: any)
    code: str | None = None  # the error code of a 4xx (None: any)


def cases() -> list[Case]:
    """One of every kind of request, good and bad; ``mix`` repeats them."""
    asr, oai = "/asr", "/v1/audio/transcriptions"
    bomb = pyav_encode(
        "webm", "libopus", np.zeros(120 * 48000, np.float32), 48000, options={"live": "1"}
    )
    out = [
        Case(f"wav{n}", oai, wav_bytes(n / SR, seed=n), {}, AUTH, 200, f"heard {n} samples")
        for n in (3200, 8000, 16000, 24000, 40000)
    ]
    out += [
        Case(f"asr{n}", asr, wav_bytes(n / SR), {}, AUTH, 200, f"heard {n} samples")
        for n in (4800, 12000)
    ]
    out += [Case(fmt, oai, encoded(fmt, 1.0), {}, AUTH, 200) for fmt in ("mp3", "m4a", "webm")]
    out += [
        Case("text", oai, b"hello, this is not audio\n" * 10, {}, AUTH, 400, code="invalid_audio"),
        Case("empty", oai, b"", {}, AUTH, 400, code="invalid_audio"),
        Case("garbage", asr, bytes(range(256)) * 8, {}, AUTH, 400, code="invalid_audio"),
        Case(
            "concat",
            oai,
            b"ffconcat version 1.0\n#\xff\nfile 'a.wav'\n",
            {},
            AUTH,
            400,
            code="invalid_audio",
        ),
        Case("long", oai, wav_bytes(12.0, sr=8000), {}, AUTH, 413, code="audio_too_long"),
        Case("bomb", oai, bomb, {}, AUTH, 413, code="audio_too_long"),
        Case("big", oai, b"RIFF" + bytes(2 << 20), {}, AUTH, 413, code="file_too_large"),
        Case("nokey", oai, wav_bytes(0.5), {}, {}, 401, code="invalid_api_key"),
        Case(
            "badkey",
            asr,
            wav_bytes(0.5),
            {},
            {"Authorization": "Bearer no"},
            401,
            code="invalid_api_key",
        ),
        Case("model", oai, wav_bytes(0.5), {"model": "other"}, AUTH, 404, code="model_not_found"),
        Case("seed", oai, wav_bytes(0.5), {"temperature": "1", "seed": "²"}, AUTH, 400),
        Case("hotwords", asr, wav_bytes(0.5), {"hotwords": "x," * 3000}, AUTH, 400),
        Case(
            "format",
            oai,
            wav_bytes(0.5),
            {"response_format": "xml"},
            AUTH,
            400,
            code="unsupported_value",
        ),
    ]
    return out


def mix(n: int, seed: int) -> list[Case]:
    kinds = cases()
    rng = random.Random(seed)
    return [kinds[i % len(kinds)] for i in rng.sample(range(n), n)]


async def send(client: httpx.AsyncClient, url: str, case: Case, gate: asyncio.Semaphore):
    async with gate:
        files = {"file": ("upload.bin", case.data, "application/octet-stream")}
        response = await client.post(
            url + case.route, files=files, data=case.fields, headers=case.headers
        )
        return case, response


def check(case: Case, response: httpx.Response) -> str | None:
    """What is wrong with ``response`` for ``case`` (None: nothing)."""
    if response.status_code != case.status:
        return f"{case.name}: {response.status_code} instead of {case.status}: {response.text}"
    body = response.json()
    if case.status == 200:
        if case.text is not None and body["text"] != case.text:
            return f"{case.name}: transcript {body['text']!r}, expected {case.text!r}"
        return None if body["text"].startswith("heard ") else f"{case.name}: {body}"
    error = body.get("error", {})
    if set(error) != {"message", "type", "param", "code"}:
        return f"{case.name}: not an OpenAI-style error: {body}"
    if case.code is not None and error["code"] != case.code:
        return f"{case.name}: code {error['code']!r}, expected {case.code!r}"
    return None


async def dropped_session(ws_url: str, index: int) -> str:
    """Stream some audio, then drop the connection: aborted, or closed without STOP."""
    pcm = (0.3 * np.sin(np.arange(SR) / 3) * 32767).astype(np.int16).tobytes()
    async with websockets.connect(ws_url, additional_headers=AUTH) as ws:
        await ws.send("START")
        assert "started" in await asyncio.wait_for(ws.recv(), TIMEOUT_S)
        for start in range(0, len(pcm) * (1 + index % 3), 3200):
            await ws.send(pcm[start % len(pcm) : start % len(pcm) + 3200])
            await asyncio.sleep(0.005)
        if index % 2:
            ws.transport.abort()  # the client vanishes: no close frame
            return "aborted"
    return "closed"


async def one_round(server, seed: int) -> list[str]:
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=TIMEOUT_S, limits=limits) as client:
        requests = [send(client, server.url, c, gate) for c in mix(REQUESTS, seed)]
        sessions = [dropped_session(server.ws_url, i) for i in range(WS_SESSIONS)]
        results = await asyncio.gather(*requests, *sessions, return_exceptions=True)
    answers, ended = results[:REQUESTS], results[REQUESTS:]
    problems = [repr(a) for a in answers + ended if isinstance(a, BaseException)]
    problems += [p for a in answers if not isinstance(a, BaseException) if (p := check(*a))]
    assert len(answers) == REQUESTS
    return problems


def gauge(server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    ]
    return sum(values)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def server():
    from threadserver import thread_server

    with thread_server(max_upload_mb=1, max_audio_seconds=10) as srv:
        yield srv


def test_mixed_load_with_dropped_sessions(server) -> None:
    memory = []
    for round_ in range(ROUNDS):
        started = time.monotonic()
        problems = asyncio.run(one_round(server, seed=round_))
        assert not problems, "\n".join(problems[:20])
        deadline = time.monotonic() + 10
        while gauge(server, "asrctl_websocket_sessions") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gauge(server, "asrctl_websocket_sessions") == 0
        assert gauge(server, "asrctl_requests_generating") == 0
        in_progress = gauge(server, "asrctl_requests_in_progress")
        assert in_progress == 1  # the /metrics request reading it
        memory.append(rss_mb())
        print(f"round {round_}: {time.monotonic() - started:.1f} s, RSS {memory[-1]:.0f} MB")
    assert memory[-1] - memory[0] < MAX_GROWTH_MB, f"RSS by round: {memory}"
    assert server.thread.is_alive()
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
    counted = gauge(server, 'asrctl_requests_total{endpoint="/v1/audio/transcriptions"')
    counted += gauge(server, 'asrctl_requests_total{endpoint="/asr"')
    assert counted == ROUNDS * REQUESTS  # every request answered and counted once
