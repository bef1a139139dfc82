"""Fuzzing uploads against a running server (issue 18, deliverable 3).

Valid wav/flac/ogg/mp3/m4a/webm files are mutated (bits flipped, header fields
overwritten, bytes inserted, deleted, duplicated, truncated, files spliced) and posted to
both upload routes of a real uvicorn server (``threadserver``; the model is a stand-in,
the decoding is real). Every answer must be a 200 or a 4xx with an OpenAI-style error
body, within a time limit; no 5xx, no hang, and the server still answers afterwards.
Bounded to about ``ASRCTL_FUZZ_SECONDS`` (default 60) of requests.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from media import FORMATS, encoded
from test_server import KEY
from threadserver import thread_server

AUTH = {"Authorization": f"Bearer {KEY}"}  # a dict of our own (see test_server_load)
BUDGET_S = float(os.environ.get("ASRCTL_FUZZ_SECONDS", "60"))
MAX_EXAMPLES = 5000  # the time budget ends the run first on CI machines
REQUEST_TIMEOUT_S = 20.0  # an answer later than this is a hang
ERROR_KEYS = {"message", "type", "param", "code"}
BASES = {fmt: encoded(fmt, 0.6, seed=i) for i, fmt in enumerate(FORMATS)}
MUTATIONS = ("flip", "overwrite", "header", "insert", "delete", "duplicate", "truncate", "splice")


@pytest.fixture(scope="module")
def server():
    with thread_server(max_audio_seconds=20) as srv, httpx.Client(timeout=REQUEST_TIMEOUT_S) as c:
        srv.client = c
        srv.started = time.monotonic()
        srv.answers = {}
        yield srv
        assert srv.thread.is_alive()
        assert c.get(f"{srv.url}/health").status_code == 200
        print(f"fuzz: {sum(srv.answers.values())} requests, statuses {srv.answers}")


@st.composite
def mutated_upload(draw) -> bytes:
    fmt = draw(st.sampled_from(FORMATS))
    data = bytearray(BASES[fmt])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(MUTATIONS))
        if not data:
            break
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif kind == "header":  # a length, rate or channel field near the start
            at = draw(st.integers(0, min(len(data), 96)))
            value = draw(st.sampled_from([0, 1, 2, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            data[at : at + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 256))]
        elif kind == "duplicate":
            size = draw(st.integers(1, 2048))
            data[at:at] = data[at : at + size] * draw(st.integers(1, 8))
        elif kind == "truncate":
            del data[at:]
        else:  # splice: the head of this file, the tail of another
            other = BASES[draw(st.sampled_from(FORMATS))]
            data = data[:at] + other[draw(st.integers(0, len(other) - 1)) :]
    return bytes(data)


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=mutated_upload(),
    route=st.sampled_from(["/v1/audio/transcriptions", "/asr"]),
    response_format=st.sampled_from(["json", "verbose_json", "text", "srt"]),
)
def test_mutated_uploads_get_200_or_a_4xx(server, data: bytes, route: str, response_format):
    if time.monotonic() - server.started > BUDGET_S:
        return
    fields = {"response_format": response_format} if route != "/asr" else {"timestamp": "true"}
    response = server.client.post(
        server.url + route,
        files={"file": ("upload.bin", data, "application/octet-stream")},
        data=fields,
        headers=AUTH,
    )
    server.answers[response.status_code] = server.answers.get(response.status_code, 0) + 1
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    if response.status_code != 200:
        assert set(response.json()["error"]) == ERROR_KEYS, response.text
    elif route == "/asr" or response_format in ("json", "verbose_json"):
        assert response.json()["text"].startswith("heard ")
