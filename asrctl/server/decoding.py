"""Decoding untrusted uploads: an allowlist of containers and codecs, and a length cap.

The CLI decodes local files of any format the user names (:mod:`asrctl.audio`); a server
decodes bytes a stranger sent, so nothing here lets FFmpeg guess:

* the container is recognised from its leading bytes by this module, against a fixed
  list (:data:`CONTAINERS`); anything else is refused before a decoder sees it. FFmpeg's
  demuxer is then *forced* to that container (no probing), limited to it by
  ``format_whitelist`` and allowed no protocol at all (``protocol_whitelist``), so no
  concat script, playlist, SDP, HLS or reference movie can make it open a file, a URL
  or a socket: the only input is the in-memory buffer;
* the audio codec must be on :data:`CODECS`;
* samples are counted while they are decoded and decoding stops once the audio is
  longer than the cap (plus :data:`MARGIN_S`), so a small file that expands to hours
  (a memory bomb) costs at most the cap's worth of samples; channels are mixed to mono
  chunk by chunk for the same reason.

Containers libsndfile reads (wav, flac, ogg, mp3, aiff) go through it first, exactly as
:func:`asrctl.audio.load_audio` reads them for the CLI, so both give the same samples.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from asrctl.audio import finish_samples, message_of
from asrctl.errors import AudioError

MARGIN_S = 1.0  # decoded past the cap before stopping, so a length near it is exact
SOUNDFILE_BLOCK_S = 10.0  # libsndfile reads of a stream without a known length
NO_PROTOCOL = "none"  # a protocol_whitelist no protocol matches

# Audio codecs (FFmpeg canonical names) an upload may carry.
CODECS = frozenset(
    {
        *(f"pcm_{t}" for t in ("u8", "s8", "alaw", "mulaw")),
        *(f"pcm_{t}{e}" for t in ("s16", "s24", "s32", "f32", "f64") for e in ("le", "be")),
        "adpcm_ms",
        "adpcm_ima_wav",
        "gsm_ms",
        "flac",
        "alac",
        "vorbis",
        "opus",
        "speex",
        "mp2",
        "mp3",
        "aac",
        "amr_nb",
        "amr_wb",
        "wmav1",
        "wmav2",
    }
)


@dataclass(frozen=True)
class Container:
    """One accepted container format."""

    name: str  # for messages
    demuxer: str  # the FFmpeg demuxer it is forced to
    soundfile: bool  # libsndfile reads it (the CLI's decoder for it)


WAV = Container("WAV", "wav", True)
FLAC = Container("FLAC", "flac", True)
OGG = Container("Ogg", "ogg", True)
MP3 = Container("MP3", "mp3", True)
AIFF = Container("AIFF", "aiff", True)
MP4 = Container("MP4/M4A", "mov", False)
MATROSKA = Container("WebM/Matroska", "matroska", False)
ADTS = Container("AAC (ADTS)", "aac", False)
AMR = Container("AMR", "amr", False)
ASF = Container("WMA/ASF", "asf", False)
CONTAINERS = (WAV, FLAC, OGG, MP3, AIFF, MP4, MATROSKA, ADTS, AMR, ASF)
ACCEPTED = "wav, flac, ogg/opus, mp3, aiff, m4a/mp4, webm/mkv, aac, amr, wma"
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")


class TooLong(Exception):
    """The audio is longer than the cap: ``seconds`` long, or at least that (``at_least``)."""

    def __init__(self, seconds: float, *, at_least: bool) -> None:
        super().__init__(f"{seconds:.1f} s")
        self.seconds = seconds
        self.at_least = at_least


def sniff(head: bytes) -> Container | None:
    """The container whose signature ``head`` (the file's first bytes) starts with."""
    if head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return WAV
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return AIFF
    if head[4:8] == b"ftyp":
        return MP4
    signatures = {b"fLaC": FLAC, b"OggS": OGG, b"\x1a\x45\xdf\xa3": MATROSKA, b"#!AM": AMR}
    if head[:4] in signatures:
        return signatures[head[:4]]
    if head[:16] == _ASF_GUID:
        return ASF
    if head[:3] == b"ID3":
        return MP3
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG frame sync
        return ADTS if head[1] & 0x06 == 0 else MP3  # layer bits 00: AAC in ADTS
    return None


def decode_untrusted(data: bytes, *, sample_rate: int, key: str, max_seconds: float) -> np.ndarray:
    """Decode an uploaded file to float32 mono at ``sample_rate``, reading at most
    ``max_seconds`` (+ :data:`MARGIN_S`) of it.

    Raises:
        AudioError: not an accepted container or codec, corrupt, empty or not finite.
        TooLong: the header says, or decoding found, that it is longer than ``max_seconds``.
    """
    container = sniff(data[:16])
    if container is None:
        raise AudioError(key, f"not an accepted audio file (accepted: {ACCEPTED})")
    samples, rate = None, 0
    sf_error = None
    if container.soundfile:
        try:
            samples, rate = _read_soundfile(data, max_seconds)
        except TooLong:
            raise
        except Exception as exc:  # libsndfile errors come in several types
            sf_error = message_of(exc)
    if samples is None:
        try:
            samples, rate = _read_pyav(data, container, max_seconds, key)
        except AudioError as exc:
            why = exc.cause if sf_error is None else f"soundfile: {sf_error}; PyAV: {exc.cause}"
            raise AudioError(key, f"cannot decode this {container.name} file: {why}") from None
    if len(samples) > max_seconds * rate:
        raise TooLong(len(samples) / rate, at_least=len(samples) >= _cap(max_seconds, rate))
    return finish_samples(samples, rate, sample_rate, key)


def _cap(max_seconds: float, rate: int) -> int:
    """Frames decoded at most: the cap plus the margin."""
    return math.ceil((max_seconds + MARGIN_S) * rate)


def _read_soundfile(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """Read with libsndfile as (frames, channels) float32, at most the cap's worth."""
    import soundfile as sf

    with sf.SoundFile(io.BytesIO(data)) as handle:
        rate = handle.samplerate
        if rate <= 0:
            raise ValueError(f"invalid sample rate {rate}")
        cap = _cap(max_seconds, rate)
        if handle.frames > 0 and handle.seekable():
            if handle.frames > max_seconds * rate:
                raise TooLong(handle.frames / rate, at_least=False)
            return handle.read(handle.frames, dtype="float32", always_2d=True), rate
        blocks, seen = [], 0  # length unknown: read in blocks up to the cap
        block = max(1, round(SOUNDFILE_BLOCK_S * rate))
        while seen <= cap:
            chunk = handle.read(min(block, cap + 1 - seen), dtype="float32", always_2d=True)
            if not len(chunk):
                break
            blocks.append(chunk)
            seen += len(chunk)
        if not blocks:
            return np.zeros((0, max(1, handle.channels)), dtype=np.float32), rate
        return np.concatenate(blocks), rate


def _read_pyav(
    data: bytes, container: Container, max_seconds: float, key: str
) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with the forced demuxer as mono float32, stopping past
    the cap."""
    import av

    options = {"protocol_whitelist": NO_PROTOCOL, "format_whitelist": container.demuxer}
    chunks: list[np.ndarray] = []
    rate = 0
    try:
        with av.open(
            io.BytesIO(data), "r", format=container.demuxer, container_options=options
        ) as c:
            if not c.streams.audio:
                raise AudioError(key, "no audio stream in the file")
            stream = c.streams.audio[0]
            codec = stream.codec_context.codec.canonical_name
            if codec not in CODECS:
                raise AudioError(key, f"the audio codec {codec!r} is not accepted")
            if c.duration is not None and c.duration / av.time_base > max_seconds:
                raise TooLong(c.duration / av.time_base, at_least=False)
            seen = 0
            for chunk, rate in _mono_frames(c, stream):
                chunks.append(chunk)
                seen += len(chunk)
                if seen > _cap(max_seconds, rate):
                    break
    except (AudioError, TooLong):
        raise
    except Exception as exc:  # FFmpeg errors come in many types
        raise AudioError(key, message_of(exc)) from exc
    if not chunks:
        return np.zeros(0, dtype=np.float32), rate
    return np.concatenate(chunks), rate


def _mono_frames(container, stream) -> Iterator[tuple[np.ndarray, int]]:
    """Each decoded frame as (mono float32 samples, rate), channels averaged like
    :func:`asrctl.audio.finish_samples` does."""
    import av

    resampler = av.AudioResampler(format="fltp")  # keeps the rate and channel layout
    for frame in itertools.chain(container.decode(stream), [None]):  # None: flush
        for out in resampler.resample(frame):
            planes = out.to_ndarray()  # (channels, samples)
            if len(planes) == 1:
                yield planes[0], out.sample_rate
            else:
                yield planes.T.mean(axis=1, dtype=np.float32), out.sample_rate
