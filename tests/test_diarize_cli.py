"""``--diarize`` end to end: the CLI's srt for every family's tiny fixture, ``/asr`` with
``spk=true``, the OpenAI endpoint and bench, on the fake engine (asrctl.testing): the model's
text does not matter here; the speaker labels, their times and that no cue spans a speaker
change are what is checked. Diarization is acoustic and runs for real."""

from __future__ import annotations

import os
import re

import conversation as conv
import httpx
import pytest
from clirun import run_asrctl
from liveserver import live_server

pytestmark = [
    pytest.mark.skipif(
        not conv.espeak_available(), reason="espeak-ng is not installed (install.sh does)"
    ),
]
ENGINE_FLAGS = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "1024"]
FAKE = {"ASRCTL_FAKE_ENGINE": "1"}
ORDER = [0, 1, 0, 1]
TOL = 0.5  # s between a cue's edges and the true turn's


@pytest.fixture(scope="module")
def meeting(tmp_path_factory):
    audio, turns = conv.conversation(ORDER, 0.7, seed=1)
    path = conv.write(tmp_path_factory.mktemp("meeting") / "meeting.wav", audio)
    return path, turns


CUE = re.compile(
    r"(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})\n\[(SPEAKER_\d+)\]"
)


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def _cues(body: str) -> list[tuple[float, float, str]]:
    return [(_seconds(*m[0:4]), _seconds(*m[4:8]), m[8]) for m in CUE.findall(body)]


def _check(segments: list[tuple[float, float, str]], turns) -> None:
    """Every segment lies within one true turn (± TOL) and the labels follow the turns."""
    labels = {}
    for start, end, speaker in segments:
        mid = (start + end) / 2
        turn = min(turns, key=lambda t: abs((t.start + t.end) / 2 - mid))
        assert turn.start - TOL <= start and end <= turn.end + TOL, (start, end, turn)
        assert labels.setdefault(turn.speaker, speaker) == speaker
    assert labels == {0: "SPEAKER_0", 1: "SPEAKER_1"}


@pytest.mark.parametrize("family", ["fun-asr-nano", "fireredasr-llm", "glm-asr-nano"])
def test_transcribe_diarize_srt(family, fun_asr_tiny, meeting, tmp_path):
    """Every family (VibeVoice-ASR writes its own speakers: test_diarize relabels them)."""
    from asrctl.fixtures import make_fixture

    model = fun_asr_tiny if family == "fun-asr-nano" else make_fixture(family, tmp_path / family)
    path, turns = meeting
    result = run_asrctl(
        "transcribe", str(path), "--model", str(model), "--diarize", "--format", "srt",
        "--max-tokens", "8", *ENGINE_FLAGS, timeout=600,
        extra_env={"ASRCTL_CACHE": str(tmp_path / "cache")} | FAKE,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    cues = _cues(result.stdout)
    assert len(cues) >= len(ORDER), result.stdout
    _check(cues, turns)


@pytest.fixture(scope="module")
def server(fun_asr_tiny, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--model", str(fun_asr_tiny), "--max-tokens", "8", *ENGINE_FLAGS]
    with live_server(args, log, env=os.environ | FAKE) as srv:
        yield srv


def _post(server, path, url, **data) -> httpx.Response:
    with path.open("rb") as f:
        return httpx.post(f"{server.url}{url}", files={"file": f}, data=data, timeout=300)


def test_asr_spk_true(server, meeting):
    path, turns = meeting
    r = _post(server, path, "/asr", spk="true")
    assert r.status_code == 200, r.text
    segments = r.json()["segments"]
    _check([(s["start"], s["end"], s["speaker"]) for s in segments], turns)
    plain = _post(server, path, "/asr")
    assert plain.status_code == 200 and "speaker" not in plain.json()["segments"][0]
    bad = _post(server, path, "/asr", spk="true", num_speakers="0")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "num_speakers"


def test_openai_diarized_json(server, meeting):
    from openai import OpenAI
    from openai.types.audio import TranscriptionDiarized

    path, turns = meeting
    with OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=300) as c:
        with path.open("rb") as f:
            result = c.audio.transcriptions.create(
                file=f, model="", response_format="diarized_json"
            )
    assert isinstance(result, TranscriptionDiarized)
    assert result.task == "transcribe" and result.duration > 0
    assert all(s.type == "transcript.text.segment" for s in result.segments)
    assert len({s.id for s in result.segments}) == len(result.segments)
    _check([(s.start, s.end, s.speaker) for s in result.segments], turns)


def test_openai_diarize_field_srt(server, meeting):
    path, turns = meeting
    r = _post(server, path, "/v1/audio/transcriptions", diarize="true", response_format="srt")
    assert r.status_code == 200, r.text
    _check(_cues(r.text), turns)
    streamed = _post(server, path, "/v1/audio/transcriptions", diarize="true", stream="true")
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"


def test_bench_prints_rtfx_with_and_without_diarization(fun_asr_tiny, meeting, tmp_path):
    path, _ = meeting
    out = tmp_path / "bench"
    result = run_asrctl(
        "bench", str(path), "--model", str(fun_asr_tiny), "-o", str(out), "--diarize",
        "--warmup", "0", "--repeat", "1", "--max-tokens", "8", *ENGINE_FLAGS, timeout=600,
        extra_env={"ASRCTL_CACHE": str(tmp_path / "cache")} | FAKE,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RTFx end-to-end " in result.stderr and "RTFx end-to-end-diarized" in result.stderr
    import json

    speed = json.loads((out / "bench.json").read_text())["speed"]
    assert speed["end_to_end_diarized"]["rtfx"] > 0 and speed["end_to_end"]["rtfx"] > 0
    assert speed["end_to_end_diarized"]["speakers"] == {"meeting": 2}
