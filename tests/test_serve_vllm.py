"""``asrctl serve`` as users run it: one live server (real vLLM) on the tiny fixture.

Clients are the official ``openai`` SDK, ``websockets`` and plain httpx. The server starts
once for the module (about a minute on CI's CPU); the last test shuts it down with
SIGTERM while a request is in flight. Teardown kills its process group whatever happens.
"""

from __future__ import annotations

import asyncio
import json
import os
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
import torch

sys.path.insert(0, str(Path(__file__).parent))
from liveserver import live_server

pytestmark = pytest.mark.vllm

KEY = "sk-test"
MODEL = "tiny"
MAX_TOKENS = 12
ENGINE_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]
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


def _reference_texts(model_dir: Path, paths: list[Path]) -> list[str]:
    """Greedy transcripts from transformers over asrctl's prompt embeddings (no vLLM)."""
    from transformers import AutoModelForCausalLM

    from asrctl.adapters.base import PromptOptions
    from asrctl.adapters.registry import load_adapter
    from asrctl.audio import load_audio
    from asrctl.engine import TextEmbedder
    from asrctl.export import prepare
    from asrctl.guard import truncate_loops

    llm_dir = prepare(model_dir).llm_dir
    adapter = load_adapter(model_dir)
    encoder = adapter.audio_encoder("cpu", torch.float32)
    embed = TextEmbedder(llm_dir, torch.float32)
    prompt = adapter.prompt(PromptOptions())
    llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32).eval()
    texts = []
    with torch.inference_mode():
        for path in paths:
            audio = torch.from_numpy(load_audio(path, sample_rate=SR))
            emb = torch.cat([embed(prompt.prefix), encoder([audio])[0], embed(prompt.suffix)])
            out = llm.generate(
                inputs_embeds=emb[None],
                max_new_tokens=MAX_TOKENS,
                do_sample=False,
                attention_mask=torch.ones(1, len(emb)).long(),
            )
            decoded = embed.tokenizer.decode(out[0].tolist(), skip_special_tokens=True)
            # vLLM's detokenizer withholds a trailing incomplete UTF-8 sequence
            # ... and the repetition guard (asrctl.guard) runs on every text
            texts.append(truncate_loops(adapter.postprocess(decoded.rstrip("\ufffd")))[0])
    return texts


_CUE_TIME = r"(\d\d):(\d\d):(\d\d)[,.](\d{3})"


def _parse_subtitles(body: str, kind: str) -> list[tuple[float, float, str]]:
    """Cues of an SRT or WebVTT file as (start, end, text), checking the syntax."""
    if kind == "vtt":
        header, _, body = body.partition("\n\n")
        assert header == "WEBVTT"
    marker = "," if kind == "srt" else "."
    cues = []
    for block in body.strip().split("\n\n"):
        lines = block.split("\n")
        if kind == "srt":
            assert lines.pop(0) == str(len(cues) + 1)
        timing, *text = lines
        m = re.fullmatch(f"{_CUE_TIME} --> {_CUE_TIME}", timing)
        assert m and timing.count(marker) == 2, timing
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, m.groups())
        start = h1 * 3600 + m1 * 60 + s1 + ms1 / 1000
        cues.append((start, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000, "\n".join(text)))
    return cues


def test_openai_sdk_every_response_format(client, clips):
    clip = clips[4]  # 1.58 s
    duration = round(len(sf.read(clip)[0]) / SR, 3)
    text = client.audio.transcriptions.create(file=clip, model=MODEL).text
    assert text
    plain = client.audio.transcriptions.create(file=clip, model=MODEL, response_format="text")
    assert plain == text + "\n"  # plain text, not JSON
    verbose = client.audio.transcriptions.create(
        file=clip, model=MODEL, response_format="verbose_json", timestamp_granularities=["segment"]
    )
    assert verbose.text == text and verbose.duration == duration and not verbose.words
    (segment,) = verbose.segments
    assert (segment.start, segment.end, segment.text) == (0.0, duration, text)
    assert segment.avg_logprob < 0 and len(segment.tokens) <= MAX_TOKENS
    assert "no timestamps" in verbose.model_extra["notes"][0]
    srt = client.audio.transcriptions.create(file=clip, model=MODEL, response_format="srt")
    assert _parse_subtitles(srt, "srt") == [(0.0, duration, text)]
    vtt = client.audio.transcriptions.create(file=clip, model=MODEL, response_format="vtt")
    assert _parse_subtitles(vtt, "vtt") == [(0.0, duration, text)]
    sampled = client.audio.transcriptions.create(
        file=clip, model=MODEL, temperature=1.0, extra_body={"seed": 1}
    )
    assert isinstance(sampled.text, str)  # sampling runs; its text is random


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
    server, client, clips, fun_asr_tiny
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
    assert [one_by_one[i] for i in sample] == _reference_texts(
        fun_asr_tiny, [clips[i] for i in sample]
    )


def _encoder_batches(server) -> tuple[float, float]:
    """(encoder batches run, utterances encoded) so far, from /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    count = float(re.search(r"^asrctl_encoder_batch_size_count (\S+)", text, re.M).group(1))
    total = float(re.search(r"^asrctl_encoder_batch_size_sum (\S+)", text, re.M).group(1))
    return count, total


def test_funasr_asr_endpoint(server, client, clips):
    expected = client.audio.transcriptions.create(file=clips[6], model=MODEL).text
    body = _post(server, clips[6], url="/asr", hotwords="", language="").json()
    duration = round(len(sf.read(clips[6])[0]) / SR, 3)
    assert body["text"] == expected and body["duration"] == duration
    assert body["segments"] == [{"text": expected, "start": 0.0, "end": duration}]
    assert body["processing_time"] > 0 and body["rtf"] > 0
    hot = _post(server, clips[6], url="/asr", hotwords="阿里巴巴,通义", language="zh")
    assert hot.status_code == 200 and isinstance(hot.json()["text"], str)


def test_websocket_partials_then_final(server):
    import websockets

    rng = np.random.default_rng(5)
    audio = np.concatenate(
        [
            0.1 * rng.standard_normal(round(1.6 * SR)),
            np.zeros(SR),
            0.1 * rng.standard_normal(round(1.2 * SR)),
        ]
    )
    pcm = (audio * 32767).astype("<i2").tobytes()
    frame = SR // 10 * 2  # 100 ms of PCM16

    async def session() -> list[dict]:
        url = server.url.replace("http", "ws") + "/ws"
        messages: list[dict] = []
        async with websockets.connect(
            url, additional_headers={"Authorization": f"Bearer {KEY}"}
        ) as ws:
            await ws.send("START")
            assert json.loads(await ws.recv()) == {"event": "started"}

            async def receive():
                while (m := json.loads(await ws.recv())).get("event") != "stopped":
                    messages.append(m)

            receiver = asyncio.create_task(receive())
            for i in range(0, len(pcm), frame):
                await ws.send(pcm[i : i + frame])
                await asyncio.sleep(0.1)
            await ws.send("STOP")
            await asyncio.wait_for(receiver, 120)
        return messages

    messages = asyncio.run(session())
    *interim, final = messages
    assert any(m["partial"] for m in interim), messages  # partial text while audio arrived
    assert not any(m["is_final"] for m in interim)
    assert final["is_final"] and final["partial"] == "" and final["duration_ms"] == 3800
    assert [s["start"] for s in final["sentences"]] == [0, 2380]
    assert all(s["text"] for s in final["sentences"])
    assert final["sentences"][0] in interim[-1]["sentences"]  # locked before STOP, at the silence

    async def denied():
        with pytest.raises(websockets.InvalidStatus) as e:
            async with websockets.connect(server.url.replace("http", "ws") + "/ws"):
                pass
        return e.value.response.status_code

    assert asyncio.run(denied()) == 401


def test_bad_requests_get_their_codes_and_the_server_keeps_answering(
    server, client, clips, tmp_path
):
    import openai

    good = client.audio.transcriptions.create(file=clips[7], model=MODEL).text

    def error(response, status: int) -> dict:
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert set(body) == {"message", "type", "param", "code"}
        return body

    assert error(_post(server, clips[7], headers={}), 401)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=f"{server.url}/v1", api_key="wrong", max_retries=0
        ).audio.transcriptions.create(file=clips[7], model=MODEL)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.audio.transcriptions.create(file=clips[7], model="whisper-1")
    with pytest.raises(openai.BadRequestError, match="word timestamps are not available"):
        client.audio.transcriptions.create(
            file=clips[7],
            model=MODEL,
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
    assert error(_post(server, b""), 400)["param"] == "file"
    assert "could not decode" in error(_post(server, b"RIFF\x00\x01garbage" * 50), 400)["message"]
    assert (
        "not an audio file"
        in error(_post(server, b"#EXTM3U\nfile:///etc/passwd\n"), 400)["message"]
    )
    sf.write(tmp_path / "nan.wav", np.full(8000, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    assert "NaN" in error(_post(server, tmp_path / "nan.wav"), 400)["message"]
    sf.write(tmp_path / "long.wav", np.zeros(31 * 8000, dtype=np.int16), 8000)
    assert "at most 30 s" in error(_post(server, tmp_path / "long.wav"), 413)["message"]
    assert "1 MiB" in error(_post(server, os.urandom(3 << 20)), 413)["message"]
    assert "language" in error(_post(server, clips[7], language="xx"), 400)["param"]
    assert client.audio.transcriptions.create(file=clips[7], model=MODEL).text == good

    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert [m.id for m in client.models.list()] == [MODEL]
    metrics = httpx.get(f"{server.url}/metrics").text
    for status in ("200", "400", "401", "404", "413"):
        assert f'endpoint="/v1/audio/transcriptions",status="{status}"' in metrics
    assert re.search(
        r'^asrctl_audio_seconds_total\{endpoint="/v1/audio/transcriptions"\} [1-9]', metrics, re.M
    )
    assert (
        "asrctl_request_duration_seconds_bucket" in metrics
        and "asrctl_encoder_queue_depth" in metrics
    )
    assert "vllm:" in metrics  # vLLM's own metrics follow ours


def test_sigterm_finishes_the_request_in_flight(server, clips):
    """Last: shuts the module's server down. A slow upload is in flight at SIGTERM."""
    expected = _post(server, clips[0]).json()["text"]
    body, boundary = _multipart(clips[0].read_bytes())
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


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "asrctltestboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{MODEL}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, boundary
