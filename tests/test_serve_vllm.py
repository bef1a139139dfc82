"""``asrctl serve`` as users run it: one live server (real vLLM) on the tiny fixture.

What only real vLLM can show: transcripts equal to transformers' under concurrency, vLLM's
incremental detokenizer behind streaming, its logprobs and metrics, and its engine
processes shut down by SIGTERM with a request in flight. Everything else the server does
(formats, errors, limits, WebSocket, FunASR endpoint) is tested on the fake engine in
``test_serve.py``. The server starts once for the module (about a minute on CI's CPU);
teardown kills its process group whatever happens.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from clirun import ENGINE_FLAGS
from liveserver import live_server, multipart_body

pytestmark = pytest.mark.vllm

KEY = "sk-test"
MODEL = "tiny"
MAX_TOKENS = 12
SR = 16000
N_CONCURRENT = 64


@pytest.fixture(scope="module")
def server(fun_asr_tiny, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--model", str(fun_asr_tiny), "--served-model-name", MODEL, "--api-key", KEY]
    args += ["--max-tokens", str(MAX_TOKENS), "--max-upload-mb", "1", *ENGINE_FLAGS]
    with live_server(args, log) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    with OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    """64 seeded noise clips of 0.5-2.4 s (wav), the first few in other formats/rates."""
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(11)
    paths = []
    for i in range(N_CONCURRENT):
        seconds = 0.5 + (i % 8) * 0.27
        suffix, rate = {1: (".flac", 16000), 2: (".ogg", 22050), 3: (".wav", 8000)}.get(
            i, (".wav", 16000)
        )
        path = root / f"c{i:02d}{suffix}"
        sf.write(path, (0.1 * rng.standard_normal(round(seconds * rate))).astype(np.float32), rate)
        paths.append(path)
    return paths


def _post(
    server, path: Path | bytes, name="a.wav", headers=None, url="/v1/audio/transcriptions", **fields
):
    data = path if isinstance(path, bytes) else path.read_bytes()
    headers = {"Authorization": f"Bearer {KEY}"} if headers is None else headers
    return httpx.post(
        server.url + url, files={"file": (name, data)}, data=fields, headers=headers, timeout=120
    )


def test_openai_sdk_streaming(client, clips):
    clip = clips[5]
    expected = client.audio.transcriptions.create(file=clip, model=MODEL).text
    events = list(client.audio.transcriptions.create(file=clip, model=MODEL, stream=True))
    *deltas, done = events
    assert deltas and all(e.type == "transcript.text.delta" for e in deltas)
    assert done.type == "transcript.text.done" and done.text == expected
    assert "".join(e.delta for e in deltas) == expected
    assert 0 < done.usage.output_tokens <= MAX_TOKENS
    assert (
        done.usage.input_tokens
        == done.usage.input_token_details.audio_tokens + done.usage.input_token_details.text_tokens
    )


def test_concurrent_requests_match_one_at_a_time_and_transformers(
    server, client, clips, fun_asr_tiny, reference_texts
):
    from openai import AsyncOpenAI

    one_by_one = [client.audio.transcriptions.create(file=p, model=MODEL).text for p in clips]

    async def all_at_once() -> list[str]:
        async with AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=300
        ) as c:
            results = await asyncio.gather(
                *(c.audio.transcriptions.create(file=p, model=MODEL) for p in clips)
            )
        return [r.text for r in results]

    before = _encoder_batches(server)
    concurrent = asyncio.run(all_at_once())
    assert concurrent == one_by_one
    batches, jobs = (a - b for a, b in zip(_encoder_batches(server), before, strict=True))
    assert jobs == N_CONCURRENT and batches < N_CONCURRENT  # audio was encoded in batches
    sample = [0, 3, 7]
    assert [one_by_one[i] for i in sample] == reference_texts(
        fun_asr_tiny, [clips[i] for i in sample], MAX_TOKENS
    )
    verbose = client.audio.transcriptions.create(
        file=clips[0], model=MODEL, response_format="verbose_json"
    )
    assert verbose.text == one_by_one[0] and verbose.segments[0].avg_logprob < 0
    assert "vllm:" in httpx.get(f"{server.url}/metrics").text  # vLLM's own metrics follow ours


def _encoder_batches(server) -> tuple[float, float]:
    """(encoder batches run, utterances encoded) so far, from /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    count = float(re.search(r"^asrctl_encoder_batch_size_count (\S+)", text, re.M).group(1))
    total = float(re.search(r"^asrctl_encoder_batch_size_sum (\S+)", text, re.M).group(1))
    return count, total


def test_sigterm_finishes_the_request_in_flight(server, clips):
    """Last: shuts the module's server down. A slow upload is in flight at SIGTERM."""
    expected = _post(server, clips[0]).json()["text"]
    boundary = "asrctltestboundary"
    body = multipart_body(clips[0].read_bytes(), MODEL, boundary)
    sent_first = threading.Event()

    def slow_body():
        for i in range(0, len(body), len(body) // 4 + 1):
            yield body[i : i + len(body) // 4 + 1]
            sent_first.set()
            time.sleep(0.5)

    result = {}

    def upload():
        result["response"] = httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            content=slow_body(),
            headers={
                "Authorization": f"Bearer {KEY}",
                "content-type": f"multipart/form-data; boundary={boundary}",
            },
            timeout=120,
        )

    thread = threading.Thread(target=upload)
    thread.start()
    assert sent_first.wait(30)
    server.proc.send_signal(signal.SIGTERM)
    thread.join(120)
    response = result["response"]
    assert response.status_code == 200, response.text
    assert response.json()["text"] == expected
    assert server.proc.wait(timeout=120) == 0, server.tail()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/health", timeout=2)
