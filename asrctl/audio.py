"""Decode any audio input to float32 mono samples at the rate a model expects.

Backends, in the order they are tried:

* ``soundfile`` (libsndfile) reads wav/flac/ogg/mp3 and friends. It is fast, exact for PCM and
  can seek, so a Kaldi segment of a long recording reads only that segment.
* ``PyAV`` (FFmpeg) decodes everything else: m4a/mp4/webm/opus/aac/wma and other containers.
  Those extensions go to PyAV directly; any file soundfile rejects is retried with PyAV.
  PyAV converts samples to planar float; channels are then averaged like every other input.
* ``soxr`` resamples (``HQ`` quality). No resampling is written by hand here.

Every failure, whatever the backend, surfaces as :class:`~asrctl.errors.AudioError` naming
the input's key and the cause; no soundfile or PyAV exception escapes this module.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from asrctl.errors import AudioError

# File extensions (lower case, no dot) decoded with PyAV first: containers libsndfile cannot read.
PYAV_EXTENSIONS = frozenset(
    {"m4a", "mp4", "webm", "opus", "aac", "wma", "mkv", "mov", "amr", "3gp"}
)
# Full-scale value (dimensionless sample units) of integer sample types: divide to land in [-1, 1].
INT_FULL_SCALE = {np.dtype(t): float(np.iinfo(t).max + 1) for t in (np.int8, np.int16, np.int32)}
UINT8_ZERO = 128.0  # 8-bit unsigned PCM is offset by half its range
RESAMPLE_QUALITY = "HQ"  # soxr quality preset

AudioSource = str | os.PathLike[str] | bytes | np.ndarray


def load_audio(
    source: AudioSource,
    *,
    sample_rate: int,
    key: str | None = None,
    source_rate: int | None = None,
    start: float = 0.0,
    end: float | None = None,
) -> np.ndarray:
    """Load one input as float32 mono samples in [-1, 1] at ``sample_rate``.

    Args:
        source: A file path, the bytes of an encoded file, or samples. Arrays are 1-D, or 2-D
            with the shorter axis taken as channels; int8/int16/int32/uint8 are scaled to [-1, 1].
        sample_rate: Rate of the returned samples, in Hz.
        key: Name used in error messages; defaults to the path (or ``<bytes>``/``<array>``).
        source_rate: Rate of ``source`` in Hz when it is an array (required then, else ignored).
        start: Seconds to skip at the beginning (Kaldi segment start).
        end: Seconds at which to stop, ``None`` for the end of the audio.

    Returns:
        A 1-D float32 array, clipped to [-1, 1].

    Raises:
        AudioError: The input is missing, undecodable, empty, not finite or of a bad shape.
    """
    if isinstance(source, np.ndarray):
        key = key or "<array>"
        if source_rate is None:
            raise AudioError(key, "an array input needs source_rate (its sample rate in Hz)")
        rate = source_rate
        samples = _cut(_array_to_float(source, key), rate, start, end, key)
    elif isinstance(source, bytes | bytearray | memoryview):
        key = key or "<bytes>"
        if not source:
            raise AudioError(key, "empty input (0 bytes)")
        data = bytes(source)
        samples, rate = _decode(lambda: io.BytesIO(data), "", start, end, key)
    else:
        path = Path(source)
        key = key or str(path)
        if not path.exists():
            raise AudioError(key, f"file not found: {path}")
        if path.is_dir():
            raise AudioError(key, f"is a directory, not an audio file: {path}")
        samples, rate = _decode(lambda: str(path), path.suffix.lower().lstrip("."), start, end, key)
    return finish_samples(samples, rate, sample_rate, key)


def decode_bytes(
    data: bytes, *, sample_rate: int, key: str, start: float = 0.0, end: float | None = None
) -> np.ndarray:
    """Decode an in-memory encoded file (e.g. an HTTP upload) like :func:`load_audio`.

    Args:
        data: The bytes of a wav/flac/ogg/mp3/m4a/webm/... file.
        sample_rate: Rate of the returned samples, in Hz.
        key: Name used in error messages.
        start: Seconds to skip at the beginning.
        end: Seconds at which to stop, ``None`` for the end.

    Returns:
        A 1-D float32 array in [-1, 1] at ``sample_rate``.

    Raises:
        AudioError: The bytes are empty or cannot be decoded as audio.
    """
    return load_audio(data, sample_rate=sample_rate, key=key, start=start, end=end)


def audio_duration(source: str | os.PathLike[str] | bytes) -> float | None:
    """Return the length in seconds from the file header, without decoding.

    Args:
        source: A file path or the bytes of an encoded file.

    Returns:
        The duration in seconds, or ``None`` when it cannot be known cheaply (or at all).
    """

    def opener() -> Any:
        return io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)

    if not isinstance(source, bytes) and not Path(source).is_file():
        return None
    try:
        info = sf.info(opener())
        if info.frames > 0 and info.samplerate > 0:
            return info.frames / info.samplerate
    except Exception:  # any libsndfile failure just means "try PyAV"
        pass
    try:
        import av

        with av.open(opener()) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            streams = container.streams.audio
            if streams and streams[0].duration is not None and streams[0].time_base:
                return float(streams[0].duration * streams[0].time_base)
    except Exception:  # unknown length is a valid answer
        pass
    return None


def _decode(
    opener: Any, ext: str, start: float, end: float | None, key: str
) -> tuple[np.ndarray, int]:
    """Decode with soundfile then PyAV (PyAV only for container extensions); cut to the span."""
    sf_error = None
    if ext not in PYAV_EXTENSIONS:
        try:
            return _read_soundfile(opener(), start, end, key)
        except AudioError:
            raise
        except Exception as exc:  # libsndfile errors come in several types
            sf_error = message_of(exc)
    try:
        samples, rate = _read_pyav(opener(), key)
    except AudioError as exc:
        if sf_error is None:
            raise AudioError(key, f"cannot decode audio{_ext(ext)}: {exc.cause}") from exc
        cause = f"unsupported or corrupt audio{_ext(ext)}: soundfile: {sf_error}; PyAV: {exc.cause}"
        raise AudioError(key, cause) from exc
    return _cut(samples, rate, start, end, key), rate


def _read_soundfile(file: Any, start: float, end: float | None, key: str) -> tuple[np.ndarray, int]:
    """Read ``[start, end)`` seconds with libsndfile, seeking to the start when it can."""
    with sf.SoundFile(file) as handle:
        rate = handle.samplerate
        if handle.frames <= 0 or not handle.seekable():  # length unknown: read all, then cut
            return _cut(handle.read(dtype="float32", always_2d=True), rate, start, end, key), rate
        first, last = _span(handle.frames, rate, start, end, key)
        if first:
            handle.seek(first)
        return handle.read(last - first, dtype="float32", always_2d=True), rate


def _read_pyav(file: Any, key: str) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV as (samples, channels) float32."""
    import av

    chunks: list[np.ndarray] = []
    rate = 0
    try:
        with av.open(file) as container:
            if not container.streams.audio:
                raise AudioError(key, "no audio stream in the file")
            resampler = av.AudioResampler(format="fltp")  # keeps the rate and channel layout
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
                    rate = out.sample_rate
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
    except AudioError:
        raise
    except Exception as exc:  # FFmpeg errors come in many types
        raise AudioError(key, message_of(exc)) from exc
    if not chunks:
        return np.zeros((0, 1), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).T, rate


def _array_to_float(array: np.ndarray, key: str) -> np.ndarray:
    """Scale integer samples to [-1, 1] and lay 2-D arrays out as (samples, channels)."""
    if array.ndim not in (1, 2):
        raise AudioError(key, f"expected a 1-D or 2-D array, got shape {array.shape}")
    if array.ndim == 2 and array.shape[0] < array.shape[1]:
        array = array.T  # (channels, samples) given: fewer channels than samples
    if array.dtype in INT_FULL_SCALE:
        return (array / INT_FULL_SCALE[array.dtype]).astype(np.float32)
    if array.dtype == np.uint8:
        return ((array - UINT8_ZERO) / UINT8_ZERO).astype(np.float32)
    if not np.issubdtype(array.dtype, np.floating):
        raise AudioError(key, f"unsupported sample type {array.dtype}")
    return array.astype(np.float32, copy=False)


def _span(frames: int, rate: int, start: float, end: float | None, key: str) -> tuple[int, int]:
    """Convert ``[start, end)`` seconds to a frame range within ``frames``."""
    first = round(start * rate)
    last = frames if end is None else min(frames, round(end * rate))
    if frames > 0 and first >= frames:
        length = frames / rate
        raise AudioError(key, f"segment starts at {start:.3f} s, after the end ({length:.3f} s)")
    return first, max(first, last)


def _cut(samples: np.ndarray, rate: int, start: float, end: float | None, key: str) -> np.ndarray:
    """Keep the samples in ``[start, end)`` seconds."""
    if start == 0.0 and end is None:
        return samples
    first, last = _span(len(samples), rate, start, end, key)
    return samples[first:last]


def finish_samples(samples: np.ndarray, rate: int, sample_rate: int, key: str) -> np.ndarray:
    """Check, mix to mono, resample and clip decoded samples.

    Hot in batch transcription (loader threads): a single channel is taken as a view, not
    averaged, and two fast reductions (NaN and inf show in min/max) stand in for a full
    isfinite mask and an unconditional clip."""
    if samples.size == 0:
        raise AudioError(key, "empty audio (0 samples)")
    if samples.ndim == 2:
        mono = samples[:, 0] if samples.shape[1] == 1 else samples.mean(axis=1, dtype=np.float32)
    else:
        mono = samples
    low, high = float(mono.min()), float(mono.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise AudioError(key, "audio contains NaN or Inf samples")
    clip = low < -1.0 or high > 1.0
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality=RESAMPLE_QUALITY)
        clip = True  # resampling can overshoot
        if mono.size == 0:  # a few samples at an absurd rate
            raise AudioError(
                key, f"empty audio after resampling from {rate} Hz to {sample_rate} Hz"
            )
    if clip:
        mono = np.clip(mono, -1.0, 1.0)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _ext(ext: str) -> str:
    return f" (.{ext})" if ext else ""


def message_of(exc: Exception) -> str:
    """The decoder's own words: libsndfile's error string, FFmpeg's strerror, else str()."""
    text = getattr(exc, "error_string", None) or getattr(exc, "strerror", None) or str(exc)
    return str(text).strip() or type(exc).__name__
