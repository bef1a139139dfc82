"""Tests for asrctl.models.graphs: an encoder replayed over padded buckets gives each
utterance the outputs the eager encoder gives it.

CUDA graphs need a GPU; here the same bucketing, static buffers and padding run on the
CPU through the ``capture`` hook, which "replays" by running the encoder eagerly on the
static buffers and writing into the static outputs, as a graph replay does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from asrctl.adapters.registry import load_adapter
from asrctl.models.graphs import GRAPH_PASS_SECONDS, Buckets, GraphedCore


def eager_capture(core, feats, lengths):
    out, out_lengths = core(feats, lengths)

    def replay() -> None:
        o, n = core(feats, lengths)
        out.copy_(o)
        out_lengths.copy_(n)

    return out, out_lengths, replay


@pytest.fixture(scope="module")
def encoder(fun_asr_tiny: Path):
    return load_adapter(fun_asr_tiny).audio_encoder("cpu", torch.float32)


def graphed(encoder, cells: int) -> GraphedCore:
    return GraphedCore(
        encoder._core,
        Buckets(cells=cells),
        feature_dim=encoder.audio_encoder.config.input_size,
        dtype=torch.float32,
        device=torch.device("cpu"),
        capture=eager_capture,
    )


def waves(seconds: list[float], seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(s * 16000), generator=gen) for s in seconds]


def test_buckets_round_up_within_the_budget() -> None:
    buckets = Buckets(cells=4096)
    assert buckets.pick(1, 16) == (1, 16)
    assert buckets.pick(5, 100) == (6, 128)
    assert buckets.pick(24, 100) == (24, 128)
    assert buckets.pick(33, 100) is None  # 48 x 128 cells: over the budget
    assert buckets.pick(1, 2000) is None  # longer than the longest bucket


@pytest.mark.parametrize("seconds", [[1.0], [0.3, 2.5, 1.2], [2.0, 2.0, 0.05, 3.1, 0.7]])
def test_padded_buckets_give_the_eager_embeddings(encoder, seconds: list[float]) -> None:
    batch = waves(seconds)
    with torch.inference_mode():
        want, _ = encoder.encode(batch)
        encoder.graphs = graphed(encoder, cells=16000)
        try:
            got, _ = encoder.encode(batch)
        finally:
            encoder.graphs = None
    assert [len(g) for g in got] == [len(w) for w in want]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_a_bucket_is_captured_once_and_replayed(encoder) -> None:
    core = graphed(encoder, cells=16000)
    encoder.graphs = core
    try:
        with torch.inference_mode():
            first, _ = encoder.encode(waves([1.0, 1.1], seed=1))
            encoder.encode(waves([1.05, 0.9], seed=2))  # the same bucket, other audio
            again, _ = encoder.encode(waves([1.0, 1.1], seed=1))
    finally:
        encoder.graphs = None
    assert len(core.captured) == 1
    for a, b in zip(first, again, strict=True):  # nothing left over from the other pass
        assert torch.equal(a, b)


def test_a_pass_over_the_budget_runs_eagerly(encoder) -> None:
    core = graphed(encoder, cells=16)  # no bucket of 2 utterances fits
    encoder.graphs = core
    try:
        with torch.inference_mode():
            got, _ = encoder.encode(waves([1.0, 1.0]))
    finally:
        encoder.graphs = None
    assert core.captured == [] and len(got) == 2


def test_only_small_passes_are_graphed(encoder) -> None:
    """Graphs cover passes of up to GRAPH_PASS_SECONDS (240 s) of padded audio, whatever
    the server's pass budget: a lone clip and a pass of 16 short ones replay graphs, a pass
    of 48 long ones runs eagerly (its graphs did not fit beside vLLM in round 13)."""
    sr = 16000
    server = encoder.graph_buckets(960 * sr)
    assert server == encoder.graph_buckets(int(GRAPH_PASS_SECONDS * sr))
    assert encoder.graph_buckets(None) == server
    assert encoder.graph_buckets(60 * sr).cells < server.cells

    def frames(seconds: float) -> int:  # LFR frames of one clip, what a bucket counts
        return int(encoder.features(waves([seconds]))[1].item())

    assert server.pick(1, frames(5.0)) is not None
    assert server.pick(16, frames(7.0)) is not None
    assert server.pick(48, frames(23.0)) is None


def test_no_graphs_without_a_gpu(encoder) -> None:
    assert encoder.use_graphs(960 * 16000) is False and encoder.graphs is None


def test_a_failed_capture_falls_back_to_eager_for_good(encoder, caplog) -> None:
    calls = []

    def broken(core, feats, lengths):
        calls.append(feats.shape)
        raise RuntimeError("operation not permitted when stream is capturing")

    core = graphed(encoder, cells=16000)
    core._capture = broken
    encoder.graphs = core
    try:
        with torch.inference_mode():
            want, _ = encoder.encode(waves([1.0]))
            got, _ = encoder.encode(waves([1.0]))
    finally:
        encoder.graphs = None
    assert core.failed and len(calls) == 1 and core.captured == []
    assert torch.equal(want[0], got[0])
    assert any("capture failed" in r.getMessage() for r in caplog.records)


def test_the_readme_states_the_graphed_pass_size() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert f"up to {GRAPH_PASS_SECONDS:.0f} s of padded audio" in readme
