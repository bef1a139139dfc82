"""One way to write srt, vtt and jsonl from any result (asrctl.writers)."""

from __future__ import annotations

import json

from asrctl import writers
from asrctl.results import Segment, Transcript, Word


def test_a_transcript_is_written_directly() -> None:
    one = Transcript("a", "hello there", 2.5)
    assert writers.srt(one) == "1\n00:00:00,000 --> 00:00:02,500\nhello there\n"
    assert writers.vtt(one) == "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nhello there\n"
    split = Transcript(
        "b", "one two", 9.0, segments=(Segment(0.5, 2.0, "one"), Segment(4.0, None, "two"))
    )
    assert writers.srt(split).splitlines()[1::4] == [
        "00:00:00,500 --> 00:00:02,000",
        "00:00:04,000 --> 00:00:09,000",  # a missing end: the input's end
    ]


def test_jsonl_rows_keep_their_shape() -> None:
    plain = Transcript("a", "x", 1.0, token_ids=(1, 2), finish_reason="stop")
    timed = Transcript(
        "b", "y", 2.0, words=(Word("y", 0.1, 0.2, 0.9),), segments=(Segment(0, 2, "y", speaker=1),)
    )
    rows = [json.loads(line) for line in writers.jsonl([plain, timed]).splitlines()]
    assert rows[0] == {
        "key": "a", "text": "x", "duration": 1.0, "finish_reason": "stop", "timing": {},
        "num_tokens": 2,
    }  # fmt: skip
    assert rows[1]["words"] == [{"word": "y", "start": 0.1, "end": 0.2, "score": 0.9}]
    assert rows[1]["segments"] == [{"start": 0, "end": 2, "text": "y", "speaker": 1}]


def test_shifting_moves_times_and_keeps_missing_ones() -> None:
    assert Segment(1.0, None, "t").shifted(2.5) == Segment(3.5, None, "t")
    assert Word("w", 0.25, 0.5).shifted(1.0) == Word("w", 1.25, 1.5)
