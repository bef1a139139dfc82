"""Speaker-labelled transcription on the server (``/asr`` ``spk=true``, OpenAI ``diarize``).

The upload (decoded in memory) is run through Silero VAD and the diarizer in the decode
pool; each speaker turn is transcribed concurrently through the shared engine (turns
batch with every other request) and the turns are stitched in time order
(:func:`asrctl.segment.stitch`), each segment carrying its ``SPEAKER_k``. Families that
write speakers themselves (VibeVoice-ASR) are transcribed as usual and their ids
relabelled (:func:`asrctl.diarize.relabel`).
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from asrctl.adapters.base import PromptOptions
from asrctl.diarize import RATE, DiarizeOptions, Diarizer, gives_speakers, relabel
from asrctl.pipeline import DecodeOptions
from asrctl.results import Transcript
from asrctl.segment import stitch
from asrctl.vad import SileroVad, Span, VadOptions, detect_array

_lock = threading.Lock()
_vad: SileroVad | None = None
_diarizers: dict[DiarizeOptions, Diarizer] = {}


def _turns(audio: np.ndarray, sample_rate: int, max_segment: float, options: DiarizeOptions):
    global _vad
    import soxr

    with _lock:
        if _vad is None:
            _vad = SileroVad()
        if options not in _diarizers:
            _diarizers[options] = Diarizer(options)
        diarizer = _diarizers[options]
    audio16 = audio if sample_rate == RATE else soxr.resample(audio, sample_rate, RATE)
    spans = detect_array(audio16, RATE, VadOptions(max_segment=max_segment), _vad)
    return diarizer.turns(np.asarray(audio16, dtype=np.float32), spans)


async def transcribe_diarized(
    state,
    endpoint: str,
    audio: np.ndarray,
    prompt: PromptOptions,
    decode: DecodeOptions,
    options: DiarizeOptions,
) -> Transcript:
    """The upload's transcript with a speaker on every segment."""
    family = state.model.adapter.family
    if gives_speakers(family.name):
        return relabel(await state.transcribe(endpoint, audio, prompt, decode, vad=True))
    sr = state.model.sample_rate
    limit = min(family.max_audio_seconds or 30.0, 30.0)
    loop = asyncio.get_running_loop()
    turns = await loop.run_in_executor(state.pool, _turns, audio, sr, limit, options)
    parts = await asyncio.gather(
        *(
            state.transcribe_one(
                endpoint, audio[round(t.start * sr) : round(t.end * sr)], prompt, decode
            )
            for t in turns
        )
    )
    spans = [Span(t.start, t.end) for t in turns]
    return stitch("", len(audio) / sr, spans, parts, state.title, [t.label for t in turns])
