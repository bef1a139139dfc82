"""Untrusted upload decoding: the container/codec allowlist and the cap enforced while
decoding (asrctl.server.decoding)."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from media import FORMATS, SR, encoded, pyav_encode, tone

from asrctl.audio import decode_bytes
from asrctl.errors import AudioError
from asrctl.server import decoding
from asrctl.server.decoding import TooLong, decode_untrusted, sniff

SDP = (
    b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=\xff\nc=IN IP4 127.0.0.1\nt=0 0\n"
    b"m=audio 5004 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n"
)


def decode(data: bytes, max_seconds: float = 30.0) -> np.ndarray:
    return decode_untrusted(data, sample_rate=SR, key="up.bin", max_seconds=max_seconds)


@pytest.mark.parametrize("fmt", FORMATS)
def test_accepted_formats_decode_like_the_cli(fmt):
    data = encoded(fmt, 1.0)
    audio = decode(data)
    cli = decode_bytes(data, sample_rate=SR, key="x")
    assert abs(len(audio) - SR) < 0.1 * SR
    assert np.array_equal(audio, cli)  # the server hears what `transcribe` hears


def test_concat_script_is_not_followed(tmp_path, monkeypatch):
    """issue 18 #1: a concat script with a non-UTF-8 byte made FFmpeg open the file it names."""
    monkeypatch.chdir(tmp_path)
    sf.write(tmp_path / "secret.wav", tone(1.0), SR)
    script = b"ffconcat version 1.0\n#\xff\nfile 'secret.wav'\n"
    with pytest.raises(AudioError, match="not an accepted audio file"):
        decode(script)


@pytest.mark.parametrize(
    "payload",
    [SDP, b"#EXTM3U\n#\xff\nhttp://127.0.0.1:9/a.ts\n", b"<?xml version='1.0'?>\xff<MPD/>"],
    ids=["sdp", "hls", "dash"],
)
def test_manifests_are_refused_at_once(payload):
    """issue 18 #2: an SDP upload stalled decoding and bound UDP ports."""
    start = time.perf_counter()
    with pytest.raises(AudioError, match="not an accepted audio file"):
        decode(payload)
    assert time.perf_counter() - start < 0.5


def test_the_demuxer_is_forced_and_has_no_protocols(monkeypatch):
    """Even a payload that passes the signature check is read by the sniffed demuxer only,
    with no protocol to open anything else."""
    import av

    seen = {}
    real_open = av.open

    def spy(file, *args, **kwargs):
        seen.update(kwargs)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", spy)
    decode(encoded("webm"))
    assert seen["format"] == "matroska"
    assert seen["container_options"] == {
        "protocol_whitelist": "none",
        "format_whitelist": "matroska",
    }


def test_memory_bomb_stops_at_the_cap():
    """issue 18 #3: a webm without a duration, 10 minutes of silence, was decoded whole
    (~115 MB at 48 kHz) before its length was checked."""
    bomb = pyav_encode("webm", "libopus", np.zeros(600 * 48000, np.float32), 48000,
                       options={"live": "1"})  # fmt: skip
    assert len(bomb) < 400_000
    tracemalloc.start()
    try:
        with pytest.raises(TooLong) as info:
            decode(bomb, max_seconds=5.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.at_least and 5.0 < info.value.seconds <= 5.0 + decoding.MARGIN_S + 0.1
    assert peak < 20 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_header_length_over_the_cap_is_refused_before_decoding():
    with pytest.raises(TooLong) as info:
        decode(encoded("wav", 3.0), max_seconds=2.0)
    assert info.value.seconds == pytest.approx(3.0) and not info.value.at_least
    with pytest.raises(TooLong):
        decode(encoded("m4a", 3.0), max_seconds=2.0)


def test_length_within_the_margin_is_exact():
    with pytest.raises(TooLong) as info:
        decode(encoded("webm", 2.5), max_seconds=2.0)
    assert not info.value.at_least or info.value.seconds >= 2.0 + decoding.MARGIN_S
    assert len(decode(encoded("wav", 2.0), max_seconds=2.0)) == 2 * SR


def test_codec_outside_the_allowlist_is_refused():
    data = pyav_encode("matroska", "ac3", tone(0.5, 48000), 48000)
    with pytest.raises(AudioError, match="codec 'ac3' is not accepted"):
        decode(data)


@pytest.mark.parametrize(
    ("head", "name"),
    [
        (b"RIFF\0\0\0\0WAVEfmt ", "WAV"),
        (b"fLaC\0\0\0\x22", "FLAC"),
        (b"OggS\0\x02", "Ogg"),
        (b"ID3\x04\0\0", "MP3"),
        (b"\xff\xfb\x90\x64", "MP3"),
        (b"\xff\xf1\x50\x80", "AAC (ADTS)"),
        (b"\0\0\0\x20ftypM4A ", "MP4/M4A"),
        (b"\x1a\x45\xdf\xa3\x9f", "WebM/Matroska"),
        (b"FORM\0\0\0\0AIFF", "AIFF"),
        (b"#!AMR\n", "AMR"),
    ],
)
def test_sniff(head, name):
    container = sniff(head)
    assert container is not None and container.name == name


@pytest.mark.parametrize("head", [b"", b"ffconcat version 1.0", b"#EXTM3U", b"v=0\r\n", b"\0" * 16])
def test_sniff_refuses(head):
    assert sniff(head) is None


def test_corrupt_and_empty_files_name_the_container(tmp_path: Path):
    with pytest.raises(AudioError, match="cannot decode this WAV file"):
        decode(b"RIFF\0\0\0\0WAVEjunk")
    with pytest.raises(AudioError, match="empty audio"):
        decode(encoded("wav", 0.0))


@pytest.mark.parametrize(
    ("rate", "channels", "frames", "outcome"),
    [
        (2_147_483_647, 1, 1000, "empty audio after resampling"),  # was a 0-sample "success"
        (0xFFFFFFFF, 1, 100, "cannot decode this WAV file"),
        (16000, 65535, 2, "cannot decode this WAV file"),
        (0, 1, 20, "cannot decode this WAV file"),
    ],
)
def test_absurd_wav_headers(rate, channels, frames, outcome):
    data = np.zeros(frames * channels, np.int16).tobytes()
    fmt = struct.pack(
        "<IHHIIHH", 16, 1, channels, rate, (rate * channels * 2) & 0xFFFFFFFF,
        (channels * 2) & 0xFFFF, 16,
    )  # fmt: skip
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt
    with pytest.raises(AudioError, match=outcome):
        decode(header + b"data" + struct.pack("<I", len(data)) + data)


def test_low_rate_is_capped_by_its_length():
    data = np.zeros(100, np.int16).tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 2, 4, 2, 16)  # 100 frames at 2 Hz: 50 s
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt
    with pytest.raises(TooLong):
        decode(header + b"data" + struct.pack("<I", len(data)) + data)
