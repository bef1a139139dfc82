"""``serve --vad``: uploads longer than the model's window, split at pauses and stitched.

The upload (already decoded in memory, capped by ``--max-upload-mb``) is run through
Silero VAD in the decode pool; its segments are transcribed concurrently through the
shared engine (they batch with every other request) and joined in time order into one
:class:`~asrctl.results.Transcript` (:func:`asrctl.segment.stitch`, as batch transcription
does) whose ``segments`` carry each segment's times, text and tokens. Speech-free audio
gives an empty text without calling the model.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from asrctl.adapters.base import PromptOptions
from asrctl.pipeline import DecodeOptions
from asrctl.results import Transcript
from asrctl.segment import stitch
from asrctl.vad import SileroVad, VadOptions, detect_array

_vad: SileroVad | None = None
_vad_lock = threading.Lock()


def _spans(audio: np.ndarray, sample_rate: int, max_segment: float):
    global _vad
    with _vad_lock:
        if _vad is None:
            _vad = SileroVad()
    return detect_array(audio, sample_rate, VadOptions(max_segment=max_segment), _vad)


async def transcribe_segmented(
    state, endpoint: str, audio: np.ndarray, prompt: PromptOptions, decode: DecodeOptions
) -> Transcript:
    sr = state.model.sample_rate
    limit = state.model.adapter.family.max_audio_seconds
    loop = asyncio.get_running_loop()
    spans = await loop.run_in_executor(state.pool, _spans, audio, sr, min(limit, 30.0))
    parts = await asyncio.gather(
        *(
            state.transcribe_one(
                endpoint, audio[round(s.start * sr) : round(s.end * sr)], prompt, decode
            )
            for s in spans
        )
    )
    return stitch("", len(audio) / sr, spans, parts, state.title)
