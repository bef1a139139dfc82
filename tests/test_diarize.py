"""Speaker diarization on synthetic espeak-ng conversations with known turns (asrctl.diarize).

DER is pyannote.metrics' diarization error rate with a 0.5 s collar (±0.25 s around each
true boundary, the usual NIST setting): the synthetic turns are trimmed at the first and
last loud sample, while VAD spans are padded, so boundaries differ by design.
"""

from __future__ import annotations

import os

import conversation as conv
import pytest

from asrctl.diarize import DiarizeOptions, SpeakerTurn, relabel, renumber
from asrctl.errors import OptionsError
from asrctl.results import Segment, Transcript
from asrctl.segment import stitch
from asrctl.vad import Span, detect_array
from asrctl.writers import srt, vtt

MAX_DER = 0.10  # stated threshold for the synthetic conversations

needs_espeak = pytest.mark.skipif(
    not conv.espeak_available() and not os.environ.get("CI"),
    reason="espeak-ng is not installed (install.sh installs it; CI requires it)",
)


def _diarize(audio, options=None):
    from asrctl.diarize import Diarizer

    return Diarizer(options).turns(audio, detect_array(audio, conv.RATE))


def _der(ref, turns) -> float:
    return conv.der(ref, [(t.start, t.end, t.label) for t in turns])


@needs_espeak
def test_two_voices_found_automatically_with_low_der():
    audio, ref = conv.conversation([0, 1, 0, 1, 1, 0, 1, 0], [0.5, 0.7, 0.4, 0.6, 0.8, 0.5, 0.6])
    turns = _diarize(audio)
    assert {t.speaker for t in turns} == {0, 1}
    assert turns[0].label == "SPEAKER_0"
    assert _der(ref, turns) < MAX_DER


@pytest.mark.parametrize("voices", [3, 4])
@needs_espeak
def test_three_and_four_voices_with_known_count(voices):
    order = [0, 1, 2, 3, 1, 0, 3, 2, 0, 2, 1, 3] if voices == 4 else [0, 1, 2, 0, 2, 1, 0, 1, 2]
    audio, ref = conv.conversation(order, 0.6, seed=voices)
    turns = _diarize(audio, DiarizeOptions(num_speakers=voices))
    assert len({t.speaker for t in turns}) == voices
    assert _der(ref, turns) < MAX_DER


@needs_espeak
def test_three_voices_found_automatically():
    audio, ref = conv.conversation([0, 1, 2, 0, 2, 1, 0, 1, 2], 0.6, seed=3)
    turns = _diarize(audio, DiarizeOptions(max_speakers=4))
    assert len({t.speaker for t in turns}) in (3, 4)  # an extra small cluster may remain
    assert _der(ref, turns) < MAX_DER


@needs_espeak
def test_a_single_voice_is_one_speaker():
    audio, _ = conv.conversation([2, 2, 2, 2, 2], [0.5, 0.9, 0.4, 0.7])
    assert {t.speaker for t in _diarize(audio)} == {0}


@needs_espeak
def test_turns_cover_the_speech_spans_exactly():
    audio, _ = conv.conversation([0, 1, 0], 0.5)
    spans = detect_array(audio, conv.RATE)
    from asrctl.diarize import Diarizer

    turns = Diarizer().turns(audio, spans)
    covered = sum(t.end - t.start for t in turns)
    assert covered == pytest.approx(sum(s.end - s.start for s in spans), abs=0.01)
    assert all(any(s.start <= t.start and t.end <= s.end for s in spans) for t in turns)


def test_options_are_checked():
    with pytest.raises(OptionsError, match="min-speakers"):
        DiarizeOptions(min_speakers=3, max_speakers=2)
    with pytest.raises(OptionsError, match="num-speakers must be at least 1"):
        DiarizeOptions(num_speakers=0)
    with pytest.raises(OptionsError, match="outside"):
        DiarizeOptions(num_speakers=5, max_speakers=4)


def test_speakers_are_numbered_by_first_appearance():
    turns = [SpeakerTurn(0, 1, 3), SpeakerTurn(1, 2, 1), SpeakerTurn(2, 3, 3)]
    assert [t.label for t in renumber(turns)] == ["SPEAKER_0", "SPEAKER_1", "SPEAKER_0"]


def test_model_speaker_ids_are_relabelled():
    segs = (
        Segment(0, 1, "a", speaker=2),
        Segment(1, 2, "b", speaker=0),
        Segment(2, 3, "c", speaker=2),
    )
    out = relabel(Transcript("k", "a b c", 3.0, segments=segs))
    assert [s.speaker for s in out.segments] == ["SPEAKER_0", "SPEAKER_1", "SPEAKER_0"]


def test_stitched_turns_carry_speakers_into_subtitles():
    parts = [Transcript("a", "hello there", 1.0), Transcript("b", "hi", 1.0)]
    spans = [Span(0.0, 1.0), Span(1.0, 2.0)]
    result = stitch("k", 2.0, spans, parts, "T", ["SPEAKER_0", "SPEAKER_1"])
    assert [s.speaker for s in result.segments] == ["SPEAKER_0", "SPEAKER_1"]
    assert result.to_json()["segments"][1]["speaker"] == "SPEAKER_1"
    assert "[SPEAKER_0] hello there" in srt(result)
    assert "<v SPEAKER_1>hi" in vtt(result)


def _groups(sizes, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((len(sizes), 32)))
    rows = [c + 0.05 * rng.standard_normal((n, 32)) for c, n in zip(centres, sizes, strict=True)]
    x = np.concatenate(rows)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("options", "count"),
    [
        (DiarizeOptions(), 3),
        (DiarizeOptions(max_speakers=2), 2),
        (DiarizeOptions(min_speakers=4), 4),
        (DiarizeOptions(num_speakers=1), 1),
        (DiarizeOptions(num_speakers=3), 3),
    ],
)
def test_cluster_count_honours_the_options(options, count):
    from asrctl.diarize import cluster

    labels = cluster(_groups([8, 6, 7]), options)
    assert labels.max() + 1 == count


def test_cluster_of_two_embeddings():
    from asrctl.diarize import cluster

    x = _groups([1, 1])
    assert cluster(x[:1], DiarizeOptions()).tolist() == [0]
    assert cluster(x, DiarizeOptions()).tolist() == [0, 1]
    assert cluster(x[[0, 0]], DiarizeOptions()).tolist() == [0, 0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--num-speakers", "2"], "--num-speakers needs --diarize"),
        (["--diarize", "--no-vad"], "drop --no-vad"),
        (["--diarize", "--min-speakers", "3", "--max-speakers", "2"], "min-speakers (3)"),
    ],
)
def test_cli_speaker_options_are_checked_before_the_model_loads(tmp_path, flags, message):
    from clirun import run_asrctl

    result = run_asrctl("transcribe", "x.wav", "--model", str(tmp_path), *flags, timeout=60)
    assert result.returncode == 2 and message in result.stderr


class _Family:
    def __init__(self, name: str, limit: float) -> None:
        self.name, self.title, self.max_audio_seconds = name, name, limit


class _FakeTranscriber:
    """Transcribes each item as its sample count; a VibeVoice-like family answers with its
    own speaker ids 7, 3, 7."""

    def __init__(self, name: str, limit: float = 30.0) -> None:
        from types import SimpleNamespace

        self.adapter = SimpleNamespace(family=_Family(name, limit))
        self.seen = []

    def transcribe(self, items, options=None):
        for item in items:
            self.seen.append(item)
            n = len(item.load(conv.RATE))
            segments = None
            if self.adapter.family.name == "vibevoice-asr":
                segments = tuple(
                    Segment(i, i + 1.0, f"s{i}", speaker=k) for i, k in enumerate((7, 3, 7))
                )
            yield [Transcript(item.key, f"n{n}", n / conv.RATE, segments=segments)]


@needs_espeak
def test_long_audio_transcribes_each_speaker_turn_as_a_segment():
    from asrctl.inputs import from_arrays
    from asrctl.segment import LongAudio

    audio, turns = conv.conversation([0, 1, 0], 0.7, seed=2)
    fake = _FakeTranscriber("fun-asr-nano")
    [[result]] = list(
        LongAudio(fake, diarize=DiarizeOptions()).transcribe(from_arrays({"m": audio}, conv.RATE))
    )
    assert [s.speaker for s in result.segments] == ["SPEAKER_0", "SPEAKER_1", "SPEAKER_0"]
    assert len(fake.seen) == 3  # one request per turn, short as the input is
    for seg, turn, item in zip(result.segments, turns, fake.seen, strict=True):
        assert abs(seg.start - turn.start) < 0.5 and abs(seg.end - turn.end) < 0.5
        assert (item.start, item.end) == (seg.start, seg.end)
    assert "[SPEAKER_1]" in srt(result)


def test_long_audio_keeps_a_models_own_speakers_relabelled():
    import numpy as np

    from asrctl.inputs import from_arrays
    from asrctl.segment import LongAudio

    fake = _FakeTranscriber("vibevoice-asr", limit=3600.0)
    items = from_arrays({"m": np.zeros(conv.RATE * 3, np.float32)}, conv.RATE)
    [[result]] = list(LongAudio(fake, diarize=DiarizeOptions()).transcribe(items))
    assert [s.speaker for s in result.segments] == ["SPEAKER_0", "SPEAKER_1", "SPEAKER_0"]
    assert len(fake.seen) == 1 and fake.seen[0].end is None  # one pass, no acoustic diarization
