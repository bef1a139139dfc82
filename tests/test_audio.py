"""Tests for asrctl.audio: decoding, mixing, resampling and error reporting.

All audio is generated here (numpy + soundfile, PyAV for AAC/Opus), so no system tools are needed.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from asrctl.audio import audio_duration, decode_bytes, load_audio
from asrctl.errors import AudioError

SR = 16000  # Hz, the rate models ask for


def sine(rate: int, seconds: float = 1.0, freq: float = 1000.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def encode_pyav(path: Path, codec: str, rate: int, samples: np.ndarray) -> Path:
    """Write stereo ``samples`` (1-D, duplicated to both channels) with a PyAV encoder."""
    planar = np.ascontiguousarray(np.stack([samples, samples]))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        size = stream.codec_context.frame_size or 1024
        for pts in range(0, planar.shape[1], size):
            chunk = np.ascontiguousarray(planar[:, pts : pts + size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = rate, pts
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def test_wav_16k_is_returned_unchanged(tmp_path: Path) -> None:
    x = sine(SR)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav", sample_rate=SR)
    assert y.dtype == np.float32 and y.shape == (SR,)
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_stereo_44k_resampled_and_mixed(tmp_path: Path) -> None:
    x = sine(44100)
    sf.write(tmp_path / "s.wav", np.stack([1.2 * x, 0.4 * x], axis=1), 44100, subtype="FLOAT")
    y = load_audio(str(tmp_path / "s.wav"), sample_rate=SR)
    assert y.dtype == np.float32 and y.ndim == 1 and abs(len(y) - SR) <= 1
    assert abs(peak_hz(y, SR) - 1000.0) <= 1.0  # a 1 kHz sine stays a 1 kHz sine
    assert abs(np.abs(y[100:-100]).max() - 0.4) < 0.01  # mean of 0.6 and 0.2 amplitude


def test_stereo_mean_exact(tmp_path: Path) -> None:
    sf.write(tmp_path / "c.wav", np.tile([[0.5, -0.1]], (SR, 1)), SR, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "c.wav", sample_rate=SR), 0.2, atol=1e-6)


@pytest.mark.parametrize(("name", "subtype"), [("a.flac", "PCM_16"), ("a.ogg", "VORBIS")])
def test_flac_and_ogg(tmp_path: Path, name: str, subtype: str) -> None:
    sf.write(tmp_path / name, sine(22050), 22050, subtype=subtype)
    y = load_audio(tmp_path / name, sample_rate=SR)
    assert abs(len(y) - SR) <= 2 and abs(peak_hz(y, SR) - 1000.0) <= 1.0


def test_mp3(tmp_path: Path) -> None:
    path = tmp_path / "a.mp3"
    try:
        sf.write(path, sine(44100), 44100, format="MP3")
    except (sf.LibsndfileError, TypeError, ValueError):  # libsndfile < 1.1: encode with PyAV
        encode_pyav(path, "libmp3lame", 44100, sine(44100))
    y = load_audio(path, sample_rate=SR)
    assert abs(len(y) - SR) < 0.1 * SR and abs(peak_hz(y, SR) - 1000.0) <= 2.0


@pytest.mark.parametrize(
    ("name", "codec", "rate"),
    [
        ("a.m4a", "aac", 44100),
        ("a.mp4", "aac", 16000),
        ("a.webm", "libopus", 48000),
    ],
)
def test_pyav_containers(tmp_path: Path, name: str, codec: str, rate: int) -> None:
    path = encode_pyav(tmp_path / name, codec, rate, sine(rate))
    y = load_audio(path, sample_rate=SR)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - SR) < 0.1 * SR  # encoders add priming samples
    assert abs(peak_hz(y, SR) - 1000.0) <= 2.0
    assert audio_duration(path) == pytest.approx(1.0, abs=0.1)
    z = decode_bytes(path.read_bytes(), sample_rate=SR, key="upload")
    np.testing.assert_allclose(z, y, atol=1e-6)


def test_decode_wav_bytes(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", sine(8000), 8000)
    y = decode_bytes((tmp_path / "a.wav").read_bytes(), sample_rate=SR, key="k")
    assert len(y) == SR and abs(peak_hz(y, SR) - 1000.0) <= 1.0


def test_segment_cut(tmp_path: Path) -> None:
    x = sine(SR, 2.0)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    y = load_audio(tmp_path / "a.wav", sample_rate=SR, start=0.25, end=0.75)
    np.testing.assert_allclose(y, x[4000:12000], atol=1e-6)
    tail = load_audio(tmp_path / "a.wav", sample_rate=8000, start=1.5)
    assert len(tail) == 4000
    with pytest.raises(AudioError, match="after the end"):
        load_audio(tmp_path / "a.wav", sample_rate=SR, start=3.0, key="late")


def test_arrays() -> None:
    ints = np.array([0, 16384, -32768], dtype=np.int16)
    np.testing.assert_allclose(load_audio(ints, sample_rate=SR, source_rate=SR), [0, 0.5, -1])
    big = np.array([0, 2**30], dtype=np.int32)
    np.testing.assert_allclose(load_audio(big, sample_rate=SR, source_rate=SR), [0, 0.5])
    stereo = np.tile([[0.5, -0.1]], (100, 1))
    np.testing.assert_allclose(load_audio(stereo, sample_rate=SR, source_rate=SR), 0.2, atol=1e-6)
    np.testing.assert_allclose(load_audio(stereo.T, sample_rate=SR, source_rate=SR), 0.2, atol=1e-6)
    y = load_audio(sine(48000).astype(np.float64), sample_rate=SR, source_rate=48000)
    assert y.dtype == np.float32 and len(y) == SR


def test_silence_is_valid(tmp_path: Path) -> None:
    sf.write(tmp_path / "z.wav", np.zeros(SR), SR)
    assert not load_audio(tmp_path / "z.wav", sample_rate=SR).any()


def _corrupt(p: Path) -> Path:
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def _empty(p: Path) -> Path:
    sf.write(p, np.zeros(0, dtype=np.float32), SR)
    return p


def _nan(p: Path) -> Path:
    sf.write(p, np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    return p


def _inf(p: Path) -> Path:
    x = np.zeros(SR, dtype=np.float32)
    x[5] = np.inf
    sf.write(p, x, SR, subtype="FLOAT")
    return p


def _text(p: Path) -> Path:
    p.write_text("this is not audio\n")
    return p


@pytest.mark.parametrize(
    ("name", "make", "cause"),
    [
        ("bad.wav", _corrupt, "unsupported or corrupt"),
        ("empty.wav", _empty, "empty audio"),
        ("nan.wav", _nan, "NaN or Inf"),
        ("inf.wav", _inf, "NaN or Inf"),
        ("notes.xyz", _text, "unsupported or corrupt audio (.xyz): soundfile: "),
        ("missing.wav", lambda p: p, "file not found"),
        ("broken.m4a", _corrupt, "Invalid data"),
    ],
)
def test_file_errors_name_the_key(tmp_path: Path, name: str, make, cause: str) -> None:
    path = make(tmp_path / name)
    with pytest.raises(AudioError) as info:
        load_audio(path, sample_rate=SR, key="utt-7")
    assert str(info.value).startswith("utt-7: ") and cause in str(info.value)
    assert info.value.key == "utt-7"
    with pytest.raises(AudioError, match="utt-8"):
        decode_bytes(path.read_bytes() if path.exists() else b"", sample_rate=SR, key="utt-8")
    with pytest.raises(AudioError) as info:
        load_audio(path, sample_rate=SR)
    assert str(path) in str(info.value)  # the path is the default key


def test_array_errors() -> None:
    with pytest.raises(AudioError, match=r"^arr: .*source_rate"):
        load_audio(np.zeros(10), sample_rate=SR, key="arr")
    with pytest.raises(AudioError, match=r"^arr: .*1-D or 2-D"):
        load_audio(np.zeros((2, 2, 2)), sample_rate=SR, source_rate=SR, key="arr")
    with pytest.raises(AudioError, match=r"^arr: empty"):
        load_audio(np.zeros(0), sample_rate=SR, source_rate=SR, key="arr")
    with pytest.raises(AudioError, match=r"^arr: .*NaN"):
        load_audio(np.array([0.0, np.nan]), sample_rate=SR, source_rate=SR, key="arr")
    with pytest.raises(AudioError, match=r"^arr: unsupported sample type"):
        load_audio(np.array(["a"]), sample_rate=SR, source_rate=SR, key="arr")


def test_directory_is_not_audio(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path, sample_rate=SR, key="d")


def test_audio_duration(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", np.zeros(24000), SR)
    assert audio_duration(tmp_path / "a.wav") == pytest.approx(1.5)
    assert audio_duration((tmp_path / "a.wav").read_bytes()) == pytest.approx(1.5)
    assert audio_duration(tmp_path / "missing.wav") is None
    assert audio_duration(_text(tmp_path / "x.txt")) is None
