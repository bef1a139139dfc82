"""``serve --vad``: uploads longer than the model's window, split at pauses and stitched.

The upload (already decoded in memory, capped by ``--max-upload-mb``) is run through
Silero VAD in the decode pool; its segments are transcribed concurrently through the
shared engine (they batch with every other request) and joined in time order into one
:class:`~asrctl.server.engine.Result` whose ``segments`` carry each segment's times, text
and tokens. Speech-free audio gives an empty text without calling the model.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from asrctl.adapters.base import PromptOptions
from asrctl.segment import join_texts, shifted
from asrctl.server.engine import DecodeOptions, Result
from asrctl.server.formats import Segment
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
) -> Result:
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
    segments = tuple(
        Segment(i, s.start, s.end, r.text, r.token_ids)
        for i, (s, r) in enumerate(zip(spans, parts, strict=True))
    )
    logprobs = [(r.avg_logprob, len(r.token_ids)) for r in parts if r.avg_logprob is not None]
    n = sum(k for _, k in logprobs)
    return Result(
        text=join_texts(r.text for r in parts),
        token_ids=tuple(t for r in parts for t in r.token_ids),
        finish_reason="length" if any(r.finish_reason == "length" for r in parts) else "stop",
        duration=round(len(audio) / sr, 3),
        prompt_tokens=sum(r.prompt_tokens for r in parts),
        audio_tokens=sum(r.audio_tokens for r in parts),
        avg_logprob=sum(a * k for a, k in logprobs) / n if n else None,
        temperature=decode.temperature,
        segments=segments,
        words=_words(spans, parts),
    )


def _words(spans, parts: list[Result]) -> tuple[dict, ...] | None:
    """Every segment's words moved to the upload's clock (None unless all have words)."""
    if not parts or any(r.words is None for r in parts):
        return None
    return tuple(
        shifted(w, s.start) for s, r in zip(spans, parts, strict=True) for w in r.words or ()
    )
