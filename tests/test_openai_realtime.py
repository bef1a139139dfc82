"""``/v1/realtime`` transcription sessions (asrctl.server.openai_realtime), driven by the
official ``openai`` SDK's realtime client against a live server over the stand-in model."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

openai = pytest.importorskip("openai")
websockets = pytest.importorskip("websockets")

RATE = 24000  # OpenAI's pcm16


def _pcm(seconds: float, loud: bool, seed: int = 0) -> bytes:
    n = round(seconds * RATE)
    samples = 0.2 * np.random.default_rng(seed).standard_normal(n) if loud else np.zeros(n)
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def _chunks(data: bytes, ms: int = 100) -> list[str]:
    step = RATE * 2 * ms // 1000
    return [base64.b64encode(data[i : i + step]).decode() for i in range(0, len(data), step)]


def _session(turn_detection: dict | None) -> dict:
    return {
        "type": "transcription",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": RATE},
                "transcription": {"model": "tiny", "language": "zh"},
                "turn_detection": turn_detection,
            }
        },
    }


async def _drain(conn, until: str, count: int = 1, timeout: float = 60) -> list:
    events = []
    async with asyncio.timeout(timeout):
        async for event in conn:
            events.append(event)
            if sum(e.type == until for e in events) >= count:
                return events
    return events


def test_sdk_streams_two_utterances_with_server_vad(fake_server: str) -> None:
    """Two utterances separated by silence: speech_started/stopped, deltas, committed and
    completed per utterance, each on its own item; the first event is session.created."""

    async def scenario() -> list:
        client = openai.AsyncOpenAI(api_key="sk-x", base_url=fake_server)
        async with client.realtime.connect(
            model="tiny", extra_query={"intent": "transcription"}
        ) as conn:
            await conn.session.update(session=_session({"type": "server_vad"}))
            audio = _pcm(1.5, True) + _pcm(1.0, False) + _pcm(1.2, True, 1) + _pcm(1.0, False)
            for chunk in _chunks(audio):
                await conn.input_audio_buffer.append(audio=chunk)
            return await _drain(conn, "conversation.item.input_audio_transcription.completed", 2)

    events = asyncio.run(scenario())
    types = [e.type for e in events]
    assert types[:2] == ["session.created", "session.updated"]
    done = [e for e in events if e.type.endswith("input_audio_transcription.completed")]
    assert len(done) == 2 and done[0].item_id != done[1].item_id
    assert all(e.transcript.startswith("heard ") for e in done)  # the stand-in model's text
    for item in (done[0].item_id, done[1].item_id):
        mine = [e.type for e in events if getattr(e, "item_id", None) == item]
        assert mine[0] == "input_audio_buffer.speech_started"
        assert mine.index("input_audio_buffer.speech_stopped") < mine.index(
            "conversation.item.input_audio_transcription.completed"
        )
    deltas = "".join(
        e.delta for e in events if e.type.endswith("transcription.delta") and e.item_id == item
    )
    assert deltas == done[1].transcript  # the deltas add up to the completed transcript


def test_manual_commit_and_beta_event_names(fake_server: str) -> None:
    """turn_detection null: the client commits; beta clients get the beta spelling."""
    url = fake_server.replace("http", "ws") + "/realtime?intent=transcription"

    async def scenario() -> list[dict]:
        async with websockets.connect(
            url, additional_headers={"Authorization": "Bearer sk-x"}
        ) as ws:
            update = {
                "type": "transcription_session.update",
                "session": {"input_audio_format": "pcm16", "turn_detection": None},
            }
            await ws.send(json.dumps(update))
            for chunk in _chunks(_pcm(0.8, True)):
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))  # empty: an error
            await ws.send(json.dumps({"type": "nonsense"}))
            events = []
            while len([e for e in events if e["type"] == "error"]) < 2:
                events.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            return events

    events = asyncio.run(scenario())
    types = [e["type"] for e in events]
    assert types[0] == "transcription_session.created"
    assert "transcription_session.updated" in types and "conversation.item.created" in types
    (done,) = [e for e in events if e["type"].endswith("transcription.completed")]
    assert done["transcript"] == "heard 12800 samples"  # 0.8 s at the model's 16 kHz
    errors = [e["error"] for e in events if e["type"] == "error"]
    assert errors[0]["code"] == "input_audio_buffer_empty"
    assert "nonsense" in errors[1]["message"]


def test_refused_without_key_and_bad_format(fake_server: str) -> None:
    url = fake_server.replace("http", "ws") + "/realtime?intent=transcription"

    async def scenario() -> dict:
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with websockets.connect(url):
                pass
        async with websockets.connect(
            url, additional_headers={"Authorization": "Bearer sk-x"}
        ) as ws:
            session = {"input_audio_format": "g711_ulaw"}
            await ws.send(json.dumps({"type": "transcription_session.update", "session": session}))
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if event["type"] == "error":
                    return event

    assert asyncio.run(scenario())["error"]["code"] == "unsupported_audio_format"
