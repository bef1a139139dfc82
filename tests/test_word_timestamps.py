"""Fun-ASR-Nano word timestamps: the ModelScope layout's CTC head aligns the LLM's text
(the ``--ctc`` fixture). The text comes from asrctl.testing's fake engine: the alignment
does not depend on which engine wrote it.

The pipeline's words must equal an independent computation on the same audio and text:
the head's full-vocabulary log-probs (not the compact frames the pipeline keeps), the
batched Viterbi on those, and ``word_times``. Long audio through VAD puts every segment's
words on the input's clock.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asrctl.engine import FAKE_ENGINE_ENV, EngineOptions
from asrctl.fixtures import fun_asr_nano
from asrctl.inputs import from_arrays
from asrctl.models.ctc_words import word_times
from asrctl.models.fun_asr_ctc import forced_align
from asrctl.results import Transcript, Word
from asrctl.segment import NO_WORD_TIMES, LongAudio
from asrctl.transcribe import TranscribeOptions, Transcriber
from tests.speechlike import noise, recording

SR = 16000
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def ctc_model(tmp_path_factory):
    return fun_asr_nano.make(tmp_path_factory.mktemp("fun-asr-ctc"), ctc=True)


@pytest.fixture(scope="module")
def transcriber(ctc_model):
    options = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAKE_ENGINE_ENV, "1")
        with Transcriber(ctc_model, engine_options=options, device="cpu") as t:
            yield t


def _run(transcriber, arrays, **options) -> dict[str, Transcript]:
    opts = TranscribeOptions(max_tokens=MAX_TOKENS, **options)
    items = from_arrays(arrays, SR)
    return {r.key: r for batch in transcriber.transcribe(items, opts) for r in batch}


def _reference_words(transcriber, audio: np.ndarray, text: str) -> list[dict]:
    """Words from the full log-softmax of the head, aligned on their own."""
    encoder = transcriber.encoder
    head, tokenizer = encoder.ctc_head, encoder.ctc_tokenizer
    with torch.inference_mode():
        feats, lengths = encoder.features([torch.from_numpy(audio)])
        enc, enc_lens = encoder.audio_encoder(feats, lengths)
        (frames,) = head(enc, enc_lens)
        log_probs = head.log_probs(frames)
    ids = tokenizer.encode(text)
    (spans,) = forced_align([log_probs[:, [head.blank_id, *ids]]], [ids])
    return [
        Word(w.word, w.start, w.end, round(w.score, 3)) for w in word_times(text, tokenizer, spans)
    ]


def test_words_equal_an_independent_alignment(transcriber) -> None:
    assert transcriber.encoder.word_timing
    audios = [noise(s, seed) for seed, s in enumerate((3.0, 5.5, 8.0))]
    results = _run(transcriber, audios, encoder_batch_size=2)
    timed = 0
    for i, audio in enumerate(audios):
        r = results[f"{i:04d}"]
        assert r.words is not None
        assert list(r.words) == _reference_words(transcriber, audio, r.text)
        if r.words:
            timed += 1
            assert "".join(w.word for w in r.words) == "".join(r.text.split())
            starts = [w.start for w in r.words]
            assert starts == sorted(starts)
            assert all(0 <= w.start < w.end <= r.duration + 0.06 for w in r.words)
    assert timed >= 2  # a few words fit 3 s and more of 60 ms frames


def test_word_timestamps_can_be_switched_off(transcriber) -> None:
    results = _run(transcriber, [noise(3.0, 0)], word_timestamps=False)
    assert results["0000"].words is None
    assert "words" not in results["0000"].to_json()


def test_long_audio_words_are_on_the_input_clock(transcriber) -> None:
    audio, truth = recording([("speech", 4.0), ("silence", 2.0), ("speech", 5.0)], seed=3)
    long_audio = LongAudio(transcriber, vad=True)
    items = from_arrays([audio], SR)
    opts = TranscribeOptions(max_tokens=MAX_TOKENS)
    (r,) = [r for batch in long_audio.transcribe(items, opts) for r in batch]
    assert isinstance(r, Transcript) and r.segments and r.words is not None
    assert NO_WORD_TIMES.format(title="Fun-ASR-Nano") not in r.notes
    later = [w for w in r.words if w.start >= r.segments[-1].start]
    earlier = [w for w in r.words if w.end <= r.segments[0].end + 0.06]
    assert later and earlier  # both segments' words, the second's shifted past the first
    assert len(later) + len(earlier) == len(r.words)
    assert truth[1][0] - 0.5 <= r.segments[-1].start
