"""VAD segmentation, stitching, subtitles and the repetition guard, without vLLM.

Speech is synthetic (tests/speechlike.py: formant-filtered pulse trains that Silero VAD
scores as speech), so nothing beyond the test extras is needed. Boundaries are checked
within BOUNDARY_TOL_S of the truth (VAD padding of 0.1 s plus 32 ms windows and the
model's onset/offset lag).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asrctl.guard import truncate_loops, truncate_token_loops
from asrctl.inputs import AudioItem, from_arrays
from asrctl.results import Failure, Segment, Transcript
from asrctl.segment import LongAudio, join_texts
from asrctl.vad import WINDOW_S, SileroVad, VadOptions, detect, segment
from asrctl.writers import srt, transcript_cues, vtt

sys.path.insert(0, str(Path(__file__).parent))
import itertools

from speechlike import SR, recording

BOUNDARY_TOL_S = 0.35


# --- strict subtitle parsers -------------------------------------------------------------

_SRT_TIME = r"(\d{2}):([0-5]\d):([0-5]\d),(\d{3})"
_VTT_TIME = r"(\d{2}):([0-5]\d):([0-5]\d)\.(\d{3})"


def _secs(m: tuple[str, ...]) -> float:
    h, mi, s, ms = (int(x) for x in m)
    return h * 3600 + mi * 60 + s + ms / 1000


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    """SubRip: blocks 'N\\nSTART --> END\\ntext...' separated by one blank line, N = 1, 2, ..."""
    assert text.endswith("\n") and "\n\n\n" not in text and "\r" not in text
    cues = []
    for n, block in enumerate(text.rstrip("\n").split("\n\n"), start=1):
        lines = block.split("\n")
        assert lines[0] == str(n), block
        m = re.fullmatch(f"{_SRT_TIME} --> {_SRT_TIME}", lines[1])
        assert m, lines[1]
        start, end = _secs(m.groups()[:4]), _secs(m.groups()[4:])
        assert len(lines) >= 3 and all(line.strip() for line in lines[2:]), block
        assert not any("-->" in line for line in lines[2:])
        cues.append((start, end, "\n".join(lines[2:])))
    _check_times(cues)
    return cues


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    """WebVTT: 'WEBVTT' header, blank line, then 'START --> END\\ntext...' blocks."""
    assert text.startswith("WEBVTT\n\n") and text.endswith("\n") and "\n\n\n" not in text
    cues = []
    body = text[len("WEBVTT\n\n") :].rstrip("\n")
    for block in body.split("\n\n") if body else []:
        lines = block.split("\n")
        m = re.fullmatch(f"{_VTT_TIME} --> {_VTT_TIME}", lines[0])
        assert m, lines[0]
        assert len(lines) >= 2 and all(line.strip() for line in lines[1:]), block
        assert not any("-->" in line for line in lines[1:])
        cues.append((_secs(m.groups()[:4]), _secs(m.groups()[4:]), "\n".join(lines[1:])))
    _check_times(cues)
    return cues


def _check_times(cues) -> None:
    for i, (start, end, _) in enumerate(cues):
        assert 0 <= start < end, cues[i]
        assert i == 0 or cues[i - 1][1] <= start, "cues overlap or are out of order"


# --- segmentation on given probabilities --------------------------------------------------


def _probs(layout: list[tuple[float, float]]) -> np.ndarray:
    """[(seconds, probability), ...] → per-window probabilities."""
    return np.concatenate([np.full(round(s / WINDOW_S), p, np.float32) for s, p in layout])


def test_end_silence_tightens_as_the_segment_grows():
    opts = VadOptions(max_segment=30.0)
    # FunASR's 60 s schedule, scaled to 30 s
    assert [opts.end_silence(t) for t in (0, 4.9, 5, 10, 15, 20, 25, 30, 100)] == [
        2.0, 2.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.1
    ]  # fmt: skip
    values = [opts.end_silence(t / 10) for t in range(400)]
    assert values == sorted(values, reverse=True)


def test_dynamic_end_silence_merges_early_pauses_and_splits_late_ones():
    # 3 s speech, 1.5 s pause, 3 s speech: a young segment needs 2 s of silence: one segment
    early = segment(_probs([(3, 0.9), (1.5, 0.0), (3, 0.9), (1, 0.0)]), 8.5)
    assert len(early) == 1
    # after 12 s of speech 1 s ... the same 1.5 s pause now ends the segment
    late = segment(_probs([(12, 0.9), (1.5, 0.0), (3, 0.9), (1, 0.0)]), 17.5)
    assert len(late) == 2
    assert abs(late[0].end - 12.1) < 0.05 and abs(late[1].start - 13.4) < 0.05


def test_long_speech_is_cut_within_the_limit_and_covers_everything():
    probs = _probs([(100, 0.9)])
    probs[::97] = 0.6  # a little texture for the cut-point search
    spans = segment(probs, 100.0)
    assert all(s.duration <= 30.0 for s in spans)
    assert spans[0].start == 0.0 and spans[-1].end == pytest.approx(100.0, abs=0.05)
    assert all(
        a.end <= b.start + 1e-6 and b.start - a.end < 0.05 for a, b in itertools.pairwise(spans)
    )


def test_tiny_segments_are_merged_or_dropped():
    # a 0.4 s blip 0.5 s after a 3 s segment is merged; a 0.1 s click far away is dropped
    probs = _probs([(3, 0.9), (0.5, 0.2), (0.4, 0.9), (6, 0.0), (0.1, 0.9), (6, 0.0)])
    opts = VadOptions(schedule=((float("inf"), 0.3),))  # fixed end silence: 0.3 s
    spans = segment(probs, 16.0, opts)
    assert len(spans) == 1
    assert spans[0].start == 0.0 and abs(spans[0].end - 4.0) < 0.15


def test_no_speech_no_segments():
    assert segment(_probs([(20, 0.1)]), 20.0) == []
    assert segment(np.zeros(0, np.float32), 0.0) == []


# --- Silero on synthetic recordings -------------------------------------------------------


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    return SileroVad()


def test_boundaries_match_the_known_silences(vad):
    layout = [("silence", 1.0), ("speech", 3.0), ("silence", 3.0), ("speech", 5.0),
              ("silence", 2.5), ("noise", 2.0), ("silence", 2.5), ("tone", 2.0),
              ("silence", 2.5), ("speech", 2.0), ("silence", 4.0), ("speech", 6.0),
              ("silence", 1.0)]  # fmt: skip
    audio, truth = recording(layout, seed=3)
    items = from_arrays({"rec": audio}, SR)
    spans, duration = detect(items[0], vad=vad)
    assert duration == pytest.approx(len(audio) / SR)
    assert len(spans) == len(truth), (spans, truth)
    for span, (start, end) in zip(spans, truth, strict=True):
        assert abs(span.start - start) <= BOUNDARY_TOL_S, (span, start)
        assert abs(span.end - end) <= BOUNDARY_TOL_S, (span, end)


def test_long_speech_through_silero_stays_within_the_limit(vad):
    audio, _truth = recording([("silence", 0.5), ("speech", 75.0), ("silence", 0.5)], seed=5)
    spans, _ = detect(from_arrays({"r": audio}, SR)[0], vad=vad)
    assert len(spans) >= 3 and all(s.duration <= 30.0 for s in spans)
    assert abs(spans[0].start - 0.5) <= BOUNDARY_TOL_S
    assert abs(spans[-1].end - 75.5) <= BOUNDARY_TOL_S


@pytest.mark.parametrize("kind", ["silence", "noise", "tone"])
def test_non_speech_gives_no_segments(vad, tmp_path, kind):
    audio, _ = recording([(kind, 20.0)], seed=1)
    path = tmp_path / f"{kind}.wav"
    sf.write(path, audio, SR, subtype="PCM_16")
    spans, duration = detect(AudioItem(kind, str(path), "path"), vad=vad)
    assert spans == [] and duration == pytest.approx(20.0)


def test_streamed_file_matches_in_memory_and_resamples(vad, tmp_path):
    audio, truth = recording([("silence", 1.0), ("speech", 4.0), ("silence", 3.0),
                              ("speech", 3.0), ("silence", 1.0)], seed=9)  # fmt: skip
    path = tmp_path / "r44.wav"
    import soxr

    sf.write(path, soxr.resample(audio, SR, 44100), 44100, subtype="PCM_16")
    spans, duration = detect(AudioItem("r44", str(path), "path", start=0.5), vad=vad)
    assert duration == pytest.approx(len(audio) / SR - 0.5, abs=0.01)
    for span, (start, end) in zip(spans, truth, strict=True):
        assert abs(span.start - (start - 0.5)) <= BOUNDARY_TOL_S
        assert abs(span.end - (end - 0.5)) <= BOUNDARY_TOL_S


HOUR_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from asrctl.inputs import AudioItem
    from asrctl.vad import SileroVad, detect
    import numpy as np
    vad = SileroVad()
    vad.probabilities([np.zeros(16000, np.float32)])  # torch's one-off buffers before "base"
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spans, duration = detect(AudioItem("hour", sys.argv[1], "path"), vad=vad)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"spans": [[s.start, s.end] for s in spans], "duration": duration,
                      "base_kib": base, "peak_kib": peak}))
    print(f"RSS growth {(peak - base) / 1024:.0f} MB", file=sys.stderr)
    """
)


def test_one_hour_file_is_segmented_with_bounded_memory(tmp_path):
    """An hour at 16 kHz is 230 MB as float32 (115 MB as int16): the streamed VAD grows RSS
    by ~25 MB (one 8 min block in lanes); bound: 80 MB."""
    path = tmp_path / "hour.wav"
    clip, _ = recording([("speech", 4.0)], seed=11)
    truth = []
    with sf.SoundFile(path, "w", SR, 1, subtype="PCM_16") as f:
        block = np.zeros(60 * SR, np.float32)
        for minute in range(60):
            chunk = block.copy()
            if minute % 6 == 0:  # a 4 s utterance 20 s into every sixth minute
                chunk[20 * SR : 24 * SR] = clip
                truth.append((minute * 60 + 20.0, minute * 60 + 24.0))
            f.write(chunk)
    run = subprocess.run(
        [sys.executable, "-c", HOUR_SCRIPT, str(path)], capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    print(run.stderr.strip())
    assert out["duration"] == pytest.approx(3600.0)
    assert len(out["spans"]) == len(truth)
    for (start, end), (t0, t1) in zip(out["spans"], truth, strict=True):
        assert abs(start - t0) <= BOUNDARY_TOL_S and abs(end - t1) <= BOUNDARY_TOL_S
    growth_mb = (out["peak_kib"] - out["base_kib"]) / 1024
    assert growth_mb < 80, f"VAD of one hour grew RSS by {growth_mb:.0f} MB"


# --- stitching (a stand-in transcriber: no engine) -----------------------------------------


@dataclass
class _Family:
    max_audio_seconds: float | None = 30.0
    title: str = "Fake"
    sample_rate: int = SR


@dataclass
class _Adapter:
    family: _Family = field(default_factory=_Family)


class FakeTranscriber:
    """Transcribes each item as 'k<start>' in batches of 3, results in reverse order."""

    def __init__(self, limit: float | None = 30.0) -> None:
        self.adapter = _Adapter(_Family(limit))
        self.seen: list[AudioItem] = []

    def transcribe(self, items, options=None):
        batch = []
        for item in items:
            self.seen.append(item)
            audio = item.load(SR)
            if self.adapter.family.max_audio_seconds and len(audio) / SR > 30:
                batch.append(Failure(item.key, "too long"))
            else:
                batch.append(Transcript(item.key, f"w{item.start:.0f}", len(audio) / SR))
            if len(batch) == 3:
                yield batch[::-1]
                batch = []
        if batch:
            yield batch[::-1]


def test_long_inputs_are_split_and_stitched_in_order(vad):
    long_audio, _truth = recording([("speech", 20.0), ("silence", 3.0), ("speech", 25.0),
                                   ("silence", 3.0), ("speech", 5.0)], seed=2)  # fmt: skip
    short, _ = recording([("speech", 2.0)], seed=4)
    silent = np.zeros(40 * SR, np.float32)
    items = from_arrays({"long": long_audio, "short": short, "silent": silent}, SR)
    fake = FakeTranscriber()
    results = [r for batch in LongAudio(fake).transcribe(items) for r in batch]
    by_key = {r.key: r for r in results}
    assert sorted(by_key) == ["long", "short", "silent"]
    assert by_key["short"].segments is None  # under the limit: one pass, unchanged
    long = by_key["long"]
    assert len(long.segments) >= 3
    starts = [s.start for s in long.segments]
    assert starts == sorted(starts)
    assert long.text == " ".join(s.text for s in long.segments)
    assert long.duration == pytest.approx(56.0)
    assert any("no word timestamps" in n for n in long.notes)
    assert by_key["silent"].text == "" and by_key["silent"].segments == ()
    assert "no speech detected" in by_key["silent"].notes
    row = long.to_json()
    assert row["segments"][0].keys() == {"start", "end", "text"}
    assert "segments" not in by_key["short"].to_json()  # ordinary rows keep their shape
    cues = parse_srt(srt(transcript_cues(long)))
    assert [c[2] for c in cues] == [s.text for s in long.segments]
    assert len(parse_vtt(vtt(transcript_cues(long)))) == len(cues)


def test_vad_flag_controls_which_inputs_are_segmented():
    short, _ = recording([("speech", 2.0), ("silence", 3.0), ("speech", 2.0)], seed=6)
    items = from_arrays({"short": short}, SR)
    on = [r for b in LongAudio(FakeTranscriber(None), vad=True).transcribe(items) for r in b]
    assert len(on[0].segments) == 2
    off = [r for b in LongAudio(FakeTranscriber(), vad=False).transcribe(items) for r in b]
    assert off[0].segments is None
    nolimit = [r for b in LongAudio(FakeTranscriber(None)).transcribe(items) for r in b]
    assert nolimit[0].segments is None


def test_join_texts():
    assert join_texts(["hello", "world", ""]) == "hello world"
    assert join_texts(["你好", "世界", "ok"]) == "你好世界ok"


def test_subtitles_from_a_one_pass_transcript_span_the_audio():
    t = Transcript("k", "a --> b\n\nc", 3723.5)
    assert parse_srt(srt(transcript_cues(t))) == [(0.0, 3723.5, "a -> b\nc")]
    assert parse_vtt(vtt(transcript_cues(t))) == [(0.0, 3723.5, "a -> b\nc")]
    assert parse_vtt(vtt(transcript_cues(Transcript("k", "", 1.0)))) == []


# --- repetition guard -------------------------------------------------------------------


def test_guard_cuts_a_word_loop_that_is_there_without_it():
    looped = "hello there " + "thank you " * 40
    assert looped.count("thank you") == 40  # the loop, unguarded
    text, cut = truncate_loops(looped)
    assert cut and text == "hello there thank you thank you"


def test_guard_cuts_character_and_token_loops():
    assert truncate_loops("今天天气很好" + "好的" * 50) == ("今天天气很好好的好的", True)
    assert truncate_loops("嗯" * 40) == ("嗯嗯嗯", True)
    assert truncate_token_loops([5, 6, 7] + [1, 2, 3] * 20) == 3 + 6


@pytest.mark.parametrize(
    "text",
    ["", "no no no no", "ha ha ha ha ha", "哈哈哈哈", "Mississippi", "the cat sat on the mat, "
     "the dog sat on the log", "1000000 people", "我们 我们 我们 去吧"],
)  # fmt: skip
def test_guard_leaves_ordinary_text_alone(text):
    assert truncate_loops(text) == (text, False)


# --- serve --vad (the fake model of test_server.py: no vLLM) ------------------------------


@pytest.fixture
def vad_server():
    from fastapi.testclient import TestClient
    from test_server import FakeModel

    from asrctl.server.app import create_app
    from asrctl.server.metrics import Metrics
    from asrctl.server.options import ServerOptions
    from asrctl.server.state import ServerState

    def make(vad: bool):
        options = ServerOptions(served_model_names=("tiny",), max_upload_mb=10, vad=vad)
        state = ServerState.create(FakeModel(), options, Path("/models/x"), Metrics())
        return TestClient(create_app(state))

    return make


def _wav(audio: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_serve_vad_accepts_long_uploads_with_segment_times(vad_server):
    audio, truth = recording([("silence", 1.0), ("speech", 20.0), ("silence", 3.0),
                              ("speech", 15.0), ("silence", 1.0)], seed=8)  # fmt: skip
    files = {"file": ("long.wav", _wav(audio), "audio/wav")}
    with vad_server(False) as client:
        r = client.post("/v1/audio/transcriptions", files=files)
        assert r.status_code == 413 and "--vad" in r.json()["error"]["message"]
    with vad_server(True) as client:
        r = client.post(
            "/v1/audio/transcriptions", files=files, data={"response_format": "verbose_json"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        segs = body["segments"]
        assert len(segs) == 2 and body["duration"] == pytest.approx(40.0)
        for s, (start, end) in zip(segs, truth, strict=True):
            assert abs(s["start"] - start) <= BOUNDARY_TOL_S
            assert abs(s["end"] - end) <= BOUNDARY_TOL_S
            assert s["text"] == f"heard {round((s['end'] - s['start']) * SR)} samples"
        assert body["text"] == " ".join(s["text"] for s in segs)
        assert "voice activity detection" in body["notes"][0]
        srt_body = client.post(
            "/v1/audio/transcriptions", files=files, data={"response_format": "srt"}
        )
        cues = parse_srt(srt_body.text)
        assert [(a, b) for a, b, _ in cues] == [(s["start"], s["end"]) for s in segs]
        vtt_body = client.post(
            "/v1/audio/transcriptions", files=files, data={"response_format": "vtt"}
        )
        assert len(parse_vtt(vtt_body.text)) == 2
        asr = client.post("/asr", files=files, data={"timestamp": "true"}).json()
        assert [(s["start"], s["end"]) for s in asr["segments"]] == [
            (s["start"], s["end"]) for s in segs
        ]
        streamed = client.post("/v1/audio/transcriptions", files=files, data={"stream": "true"})
        assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "stream"
        silent = {"file": ("s.wav", _wav(np.zeros(40 * SR, np.float32)), "audio/wav")}
        r = client.post(
            "/v1/audio/transcriptions", files=silent, data={"response_format": "verbose_json"}
        )
        assert r.json()["text"] == "" and r.json()["segments"] == []
        short = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", _wav(audio[: 5 * SR]), "audio/wav")},
        )
        assert short.json()["text"] == f"heard {5 * SR} samples"  # under the window: one pass


def test_cli_format_errors_come_before_the_model_loads(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    for p in (a, b):
        sf.write(p, np.zeros(SR, np.float32), SR)

    def cli(*args):
        cmd = [sys.executable, "-m", "asrctl", "transcribe", *args, "--model", str(tmp_path)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    bad = cli(str(a), "--format", "text,docx")
    assert bad.returncode == 2 and "docx" in bad.stderr
    two = cli(str(a), str(b), "--format", "srt")
    assert two.returncode == 2 and "--output-dir" in two.stderr


class _OwnTimes(FakeTranscriber):
    """Like FakeTranscriber, but every result carries the model's own segment times."""

    def transcribe(self, items, options=None):
        for batch in super().transcribe(items, options):
            yield [
                Transcript(
                    r.key,
                    r.text,
                    r.duration,
                    segments=(Segment(0.5, None, r.text, speaker=1),),
                )
                for r in batch
            ]


def test_a_models_own_segment_times_are_moved_to_the_input_clock():
    audio, _ = recording([("speech", 20.0), ("silence", 3.0), ("speech", 15.0)], seed=2)
    [result] = [
        r for b in LongAudio(_OwnTimes()).transcribe(from_arrays({"k": audio}, SR)) for r in b
    ]
    assert [s.speaker for s in result.segments] == [1, 1]
    assert result.segments[0].start == pytest.approx(0.5, abs=BOUNDARY_TOL_S)
    assert result.segments[1].start == pytest.approx(23.5, abs=BOUNDARY_TOL_S)
    assert result.segments[1].end is None
    cues = transcript_cues(result)
    assert cues[0].end == cues[1].start and cues[1].end == result.duration
    assert "own segment timestamps" in result.notes[0]
