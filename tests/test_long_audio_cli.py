"""``asrctl transcribe long.wav --format srt,vtt --vad`` end to end, on the fake engine.

The recording is synthetic speech-like audio with known silences (tests/speechlike.py)
and a 40 s stretch without a pause, longer than Fun-ASR-Nano's 30 s window; a silent file
goes through ``--vad`` too. The fake engine runs in ``loop`` mode: like a random-weight
model it repeats itself up to ``--max-tokens``, and the repetition guard must cut that.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).parent))
from speechlike import SR, recording
from test_long_audio import BOUNDARY_TOL_S, parse_srt, parse_vtt

from asrctl.engine import FAKE_ENGINE_ENV
from asrctl.guard import truncate_loops


def test_long_recording_to_subtitles(asrctl_cli, fun_asr_tiny, tmp_path, monkeypatch):
    monkeypatch.setenv(FAKE_ENGINE_ENV, "loop")
    layout = [("silence", 1.0), ("speech", 3.0), ("silence", 3.0), ("speech", 4.0),
              ("silence", 2.5), ("noise", 2.0), ("silence", 2.5), ("speech", 40.0),
              ("silence", 1.5)]  # fmt: skip
    audio, truth = recording(layout, seed=0)
    sf.write(tmp_path / "long.wav", audio, SR, subtype="PCM_16")
    sf.write(tmp_path / "silence.wav", np.zeros(5 * SR, np.float32), SR, subtype="PCM_16")
    out = tmp_path / "out"
    run = asrctl_cli(
        "transcribe", tmp_path / "long.wav", tmp_path / "silence.wav", "--model", fun_asr_tiny,
        "-o", out, "--format", "text,jsonl", "--format", "srt,vtt", "--vad",
        "--max-tokens", "200", "--max-model-len", "1024",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = {r["key"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    long, silence = rows["long"], rows["silence"]

    # silence: no segments, no text (nothing hallucinated), subtitles without cues
    assert silence["text"] == "" and silence["segments"] == []
    assert "no speech detected" in silence["notes"]
    assert (out / "silence.srt").read_text() == ""
    assert parse_vtt((out / "silence.vtt").read_text()) == []

    # the long file: the 40 s stretch is split, every segment within the 30 s window
    segs = long["segments"]
    assert all(s["end"] - s["start"] <= 30.0 for s in segs)
    assert long["duration"] == pytest.approx(len(audio) / SR)
    assert abs(segs[0]["start"] - truth[0][0]) <= BOUNDARY_TOL_S
    assert abs(segs[0]["end"] - truth[0][1]) <= BOUNDARY_TOL_S
    assert abs(segs[1]["start"] - truth[1][0]) <= BOUNDARY_TOL_S
    assert abs(segs[1]["end"] - truth[1][1]) <= BOUNDARY_TOL_S
    assert abs(segs[2]["start"] - truth[2][0]) <= BOUNDARY_TOL_S
    assert abs(segs[-1]["end"] - truth[2][1]) <= BOUNDARY_TOL_S
    assert len(segs) >= 4  # 3 utterances, the 40 s one in two or more parts
    assert any("no word timestamps" in n for n in long["notes"])

    # subtitles carry the same segments, in order
    srt_cues = parse_srt((out / "long.srt").read_text())
    vtt_cues = parse_vtt((out / "long.vtt").read_text())
    expected = [t for s in segs if s["text"].strip() for t in (s["start"], s["end"])]
    assert [t for a, b, _ in srt_cues for t in (a, b)] == pytest.approx(expected, abs=0.001)
    assert [(a, b) for a, b, _ in vtt_cues] == [(a, b) for a, b, _ in srt_cues]
    keys = [line.split(" ", 1)[0] for line in (out / "text").read_text().splitlines()]
    assert sorted(keys) == ["long", "silence"]

    # the random model loops; every text that reached the results is loop-free
    assert long["guard_truncated"] is True
    for s in segs:
        assert truncate_loops(s["text"]) == (s["text"], False)
