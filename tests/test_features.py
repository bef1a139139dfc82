"""Tests of asrctl.models.features against kaldi-native-fbank and FunASR's LFR semantics."""

from __future__ import annotations

import math

import kaldi_native_fbank as knf
import kaldiio
import numpy as np
import pytest
import torch

from asrctl.models.features import (
    Cmvn,
    FbankOptions,
    apply_lfr,
    fbank,
    lfr_length,
    load_kaldi_cmvn,
    num_frames,
)

SR = 16000
# Both implementations compute in float32, so each mel bin carries rounding noise of roughly
# 1e-6 of the frame's strongest bin. Within DYNAMIC_RANGE_NATS (~61 dB) of a frame's peak mel
# bin the log-mel values agree to LOGMEL_ATOL (measured max ~4e-4). Deeper bins (only reached
# by a pure float sweep through a Povey/Hann window, whose side lobes fall below the float32
# noise floor) are noise in both, and are checked in the power domain relative to the frame
# peak instead (measured max ~2e-5); a float64 reference disagrees with both by as much.
LOGMEL_ATOL = 1e-3
DYNAMIC_RANGE_NATS = 14.0
POWER_ATOL_REL_PEAK = 1e-4
BATCH_ATOL = 1e-5  # padded batch vs one utterance alone: same math, other FFT batch shapes


def _signal(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    """Float32 waveform in [-1, 1]: seeded gaussian noise or a 100 Hz -> 7.9 kHz sine sweep."""
    n = round(seconds * SR)
    if kind == "noise":
        x = np.clip(0.2 * np.random.default_rng(seed).standard_normal(n), -1.0, 1.0)
    else:
        t = np.arange(n) / SR
        x = 0.5 * np.sin(2 * np.pi * (100 * t + (7900 - 100) / (2 * seconds) * t * t))
    return x.astype(np.float32)


def _knf_fbank(samples: np.ndarray, window: str, snip_edges: bool) -> np.ndarray:
    """kaldi-native-fbank features of int16-scale float samples, (T, 80)."""
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = window
    opts.frame_opts.snip_edges = snip_edges
    opts.frame_opts.samp_freq = SR
    opts.mel_opts.num_bins = 80
    comp = knf.OnlineFbank(opts)
    comp.accept_waveform(SR, samples.astype(np.float32).tolist())
    comp.input_finished()
    frames = [comp.get_frame(i) for i in range(comp.num_frames_ready)]
    return np.asarray(frames, dtype=np.float32).reshape(-1, 80)


def _assert_close_to_kaldi(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    if ref.size == 0:
        return
    peak = ref.max(axis=1, keepdims=True)
    shallow = ref >= peak - DYNAMIC_RANGE_NATS
    np.testing.assert_allclose(ours[shallow], ref[shallow], rtol=0, atol=LOGMEL_ATOL)
    power_err = np.abs(np.exp(ours.astype(np.float64)) - np.exp(ref.astype(np.float64)))
    assert (power_err / np.exp(peak.astype(np.float64))).max() <= POWER_ATOL_REL_PEAK


@pytest.mark.parametrize("seconds", [0.37, 1.0, 3.3])
@pytest.mark.parametrize("kind", ["noise", "sweep"])
@pytest.mark.parametrize("window", ["povey", "hamming"])
@pytest.mark.parametrize("snip_edges", [True, False])
def test_fbank_matches_kaldi_native_fbank(
    seconds: float, kind: str, window: str, snip_edges: bool
) -> None:
    x = _signal(kind, seconds)
    ref = _knf_fbank(x * 32768.0, window, snip_edges)
    opts = FbankOptions(window=window, snip_edges=snip_edges, scale_to_int16=True)
    feats, frames = fbank(torch.from_numpy(x)[None], torch.tensor([len(x)]), opts)
    assert frames.tolist() == [ref.shape[0]]
    _assert_close_to_kaldi(feats[0].numpy(), ref)


@pytest.mark.parametrize("snip_edges", [True, False])
def test_num_frames_matches_kaldi(snip_edges: bool) -> None:
    opts = FbankOptions(snip_edges=snip_edges)
    sizes = [0, 1, 80, 239, 240, 399, 400, 401, 559, 560, 561, 16000, 16079, 16080]
    expected = [_knf_fbank(np.ones(n, np.float32), "povey", snip_edges).shape[0] for n in sizes]
    assert [num_frames(n, opts) for n in sizes] == expected
    assert num_frames(torch.tensor(sizes), opts).tolist() == expected


@pytest.mark.parametrize("snip_edges", [True, False])
def test_padded_batch_equals_each_alone(snip_edges: bool) -> None:
    opts = FbankOptions(snip_edges=snip_edges)
    waves = [_signal("noise", 0.37, 1), _signal("sweep", 1.0), _signal("noise", 3.3, 2)]
    waves = [w * 32768.0 for w in waves]
    batch = torch.zeros(3, max(len(w) for w in waves))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = torch.from_numpy(w)
    lengths = torch.tensor([len(w) for w in waves])
    feats, frames = fbank(batch, lengths, opts)
    assert frames.tolist() == [_knf_fbank(w, "povey", snip_edges).shape[0] for w in waves]
    assert feats.shape == (3, int(frames.max()), 80)
    for i, w in enumerate(waves):
        alone, count = fbank(torch.from_numpy(w)[None], lengths[i : i + 1], opts)
        assert count.tolist() == [frames[i]]
        torch.testing.assert_close(feats[i, : frames[i]], alone[0], rtol=0, atol=BATCH_ATOL)
        assert not feats[i, frames[i] :].any()


def test_fbank_too_short_gives_no_frames() -> None:
    feats, frames = fbank(torch.randn(2, 300), torch.tensor([0, 300]), FbankOptions())
    assert feats.shape == (2, 0, 80)
    assert frames.tolist() == [0, 0]


def test_fbank_rejects_unknown_window() -> None:
    with pytest.raises(ValueError, match="window"):
        fbank(torch.randn(1, 800), torch.tensor([800]), FbankOptions(window="kaiser"))


def _lfr_reference(x: np.ndarray, m: int, n: int) -> np.ndarray:
    """FunASR's apply_lfr for one utterance, written out frame by frame."""
    t = x.shape[0]
    padded = np.concatenate([np.repeat(x[:1], (m - 1) // 2, axis=0), x])
    out = []
    for i in range(math.ceil(t / n)):
        if m <= padded.shape[0] - i * n:
            out.append(padded[i * n : i * n + m].reshape(-1))
        else:
            rest = padded[i * n :]
            fill = np.repeat(padded[-1:], m - rest.shape[0], axis=0)
            out.append(np.concatenate([rest, fill]).reshape(-1))
    return np.stack(out)


@pytest.mark.parametrize(
    ("t", "m", "n"),
    [(12, 7, 6), (13, 7, 6), (17, 7, 6), (6, 7, 6), (3, 7, 6), (1, 7, 6), (9, 5, 3), (5, 1, 1)],
)
def test_apply_lfr_single(t: int, m: int, n: int) -> None:
    x = np.random.default_rng(t).standard_normal((t, 4)).astype(np.float32)
    out, lengths = apply_lfr(torch.from_numpy(x)[None], torch.tensor([t]), m, n)
    expected = _lfr_reference(x, m, n)
    assert lengths.tolist() == [expected.shape[0]] == [lfr_length(t, n)]
    np.testing.assert_array_equal(out[0].numpy(), expected)


def test_apply_lfr_padded_batch() -> None:
    m, n, dim = 7, 6, 3
    sizes = [13, 3, 30, 1]
    rng = np.random.default_rng(0)
    utts = [rng.standard_normal((t, dim)).astype(np.float32) for t in sizes]
    batch = torch.full((len(sizes), max(sizes), dim), 1e6)  # padding must never be read
    for i, u in enumerate(utts):
        batch[i, : len(u)] = torch.from_numpy(u)
    out, lengths = apply_lfr(batch, torch.tensor(sizes), m, n)
    assert lengths.tolist() == [math.ceil(t / n) for t in sizes]
    assert lfr_length(torch.tensor(sizes), n).tolist() == lengths.tolist()
    assert out.shape == (len(sizes), max(lengths), m * dim)
    for i, u in enumerate(utts):
        np.testing.assert_array_equal(out[i, : lengths[i]].numpy(), _lfr_reference(u, m, n))
        assert not out[i, lengths[i] :].any()


def test_load_kaldi_cmvn_binary(tmp_path) -> None:
    count = 50.0
    mean = np.array([1.0, -2.0, 0.5])
    var = np.array([4.0, 0.25, 1.0])
    stats = np.zeros((2, 4))
    stats[0, :3], stats[0, 3] = mean * count, count
    stats[1, :3] = (var + mean**2) * count
    path = tmp_path / "cmvn.ark"
    kaldiio.save_mat(str(path), stats)
    cmvn = load_kaldi_cmvn(path)
    assert isinstance(cmvn, Cmvn)
    np.testing.assert_allclose(cmvn.mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(cmvn.istd.numpy(), [0.5, 2.0, 1.0], rtol=1e-6)
    feats = torch.tensor([[[3.0, -1.5, 1.5]]])
    torch.testing.assert_close(cmvn.apply(feats), torch.tensor([[[1.0, 1.0, 1.0]]]))


def test_load_kaldi_cmvn_text_and_bad_shape(tmp_path) -> None:
    text = tmp_path / "cmvn.txt"
    text.write_text(" [\n  2 4 2\n  4 12 2 ]\n")
    cmvn = load_kaldi_cmvn(text)
    np.testing.assert_allclose(cmvn.mean.numpy(), [1.0, 2.0])
    np.testing.assert_allclose(cmvn.istd.numpy(), [1.0, 1.0 / math.sqrt(2.0)], rtol=1e-6)
    bad = tmp_path / "bad.ark"
    kaldiio.save_mat(str(bad), np.ones((3, 4)))
    with pytest.raises(ValueError, match="CMVN"):
        load_kaldi_cmvn(bad)
