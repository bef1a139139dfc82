"""Very short clips (asrctl.models.padding): every family's encoder gives at least one
embedding for any non-empty clip, alone in its pass or batched, and ``audio_positions``
counts exactly what it gives (issue 18 #5: a clip under ~25 ms alone in its encoder pass
crashed ``transcribe`` and was a 500 on the server)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asrctl.adapters.registry import load_adapter
from asrctl.fixtures import make_fixture
from asrctl.models.padding import pad_short, padded_batch, shortest_input

FAMILIES = ("fun-asr-nano", "fireredasr-llm", "glm-asr-nano", "vibevoice-asr")
SHORT = (1, 80, 240, 399, 400, 560, 960, 1039, 1040, 1600)  # samples at 16 kHz


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory: pytest.TempPathFactory):
    folder = make_fixture(request.param, tmp_path_factory.mktemp("short") / request.param)
    adapter = load_adapter(Path(folder))
    return adapter, adapter.audio_encoder("cpu", torch.float32)


def _embeddings(encoder, waves: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = encoder(waves)
    return list(out)


@pytest.mark.parametrize("samples", SHORT)
def test_short_clip_alone_in_its_pass(family, samples: int) -> None:
    adapter, encoder = family
    wave = 0.1 * torch.randn(samples, generator=torch.Generator().manual_seed(samples))
    (out,) = _embeddings(encoder, [wave])
    assert len(out) >= 1 and torch.isfinite(out).all()
    assert adapter.audio_positions(samples) == len(out)


def test_short_clip_batched_with_long_ones(family) -> None:
    adapter, encoder = family
    gen = torch.Generator().manual_seed(1)
    waves = [0.1 * torch.randn(n, generator=gen) for n in (16000, 200, 8000, 1)]
    out = _embeddings(encoder, waves)
    assert [len(o) for o in out] == [adapter.audio_positions(len(w)) for w in waves]
    assert min(len(o) for o in out) >= 1


def test_padding_does_not_change_longer_clips(family) -> None:
    """A clip at least the minimum long is encoded as it is (no padding)."""
    adapter, encoder = family
    gen = torch.Generator().manual_seed(2)
    wave = 0.1 * torch.randn(16000, generator=gen)
    (alone,) = _embeddings(encoder, [wave])
    assert adapter.audio_positions(16000) == len(alone)
    assert adapter.audio_positions(16000) > adapter.audio_positions(1)


def test_shortest_input_and_pad_short() -> None:
    for minimum in (1, 2, 400, 961, 1040):
        assert shortest_input(lambda n, m=minimum: int(n >= m)) == minimum
    with pytest.raises(ValueError):
        shortest_input(lambda n: 0)
    padded = pad_short([torch.ones(3), torch.ones(10)], 5)
    assert padded[0].tolist() == [1, 1, 1, 0, 0] and len(padded[1]) == 10


def test_padded_batch_is_the_waves_then_zeros() -> None:
    gen = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=gen) for n in (5, 1, 9)]
    want = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    assert torch.equal(padded_batch(waves, torch.device("cpu")), want)
    wide = padded_batch(waves, torch.device("cpu"), width=12)
    assert wide.shape == (3, 12) and wide.dtype == torch.float32
    assert torch.equal(wide[:, :9], want) and not wide[:, 9:].any()
