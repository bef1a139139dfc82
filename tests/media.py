"""Small encoded audio files made on the fly: wav, flac, ogg, mp3 (libsndfile), m4a, webm
(PyAV), for upload tests. Nothing is committed; everything is seeded."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

SR = 16000
FORMATS = ("wav", "flac", "ogg", "mp3", "m4a", "webm")


def tone(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A seeded tone with a little noise, float32 in [-0.5, 0.5]."""
    t = np.arange(round(seconds * sr)) / sr
    noise = 0.05 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def encoded(fmt: str, seconds: float = 1.0, *, sr: int = SR, seed: int = 0) -> bytes:
    """``seconds`` of :func:`tone` encoded as ``fmt`` (one of :data:`FORMATS`)."""
    samples = tone(seconds, sr, seed)
    soundfile_kinds = {
        "wav": ("WAV", "PCM_16"),
        "flac": ("FLAC", "PCM_16"),
        "ogg": ("OGG", "VORBIS"),
        "mp3": ("MP3", "MPEG_LAYER_III"),
    }
    if fmt in soundfile_kinds:
        buf = io.BytesIO()
        kind, subtype = soundfile_kinds[fmt]
        sf.write(buf, samples, sr, format=kind, subtype=subtype)
        return buf.getvalue()
    if fmt == "m4a":
        return pyav_encode("mp4", "aac", samples, sr)
    if fmt == "webm":
        return pyav_encode("webm", "libopus", samples, sr, rate=48000)
    raise ValueError(fmt)


def pyav_encode(
    container: str,
    codec: str,
    samples: np.ndarray,
    sr: int,
    *,
    rate: int | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """Mono ``samples`` (float32 at ``sr``) encoded with PyAV; ``rate`` resamples first.

    ``options`` are the muxer's (e.g. ``{"live": "1"}``: a webm without a duration)."""
    import av

    rate = rate or sr
    if rate != sr:
        import soxr

        samples = soxr.resample(samples, sr, rate).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container, container_options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        kind = stream.codec_context.format.name
        step = stream.codec_context.frame_size or 1024
        for i in range(0, len(samples), step):
            chunk = samples[None, i : i + step]
            if kind.startswith("s16"):
                chunk = (chunk * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk), format=kind, layout="mono"
            )
            frame.sample_rate, frame.pts = rate, i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()
