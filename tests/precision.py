"""Tolerances for half-precision audio encoders against the float32 references."""

from __future__ import annotations

from collections.abc import Sequence

import torch

# relative error ||ours - reference|| / ||reference|| over an utterance's embeddings allowed
# for a bfloat16 encoder (8-bit mantissa: 2^-9 = 2e-3 per rounding, compounded over layers)
BF16_RTOL = 2e-2


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``||got - ref|| / ||ref||`` in float32."""
    got, ref = got.float(), ref.float()
    return float((got - ref).norm() / ref.norm())


def worst_relative_error(got: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> float:
    """The largest :func:`relative_error` over utterances (shapes must agree)."""
    assert [g.shape for g in got] == [r.shape for r in refs]
    return max(relative_error(g, r) for g, r in zip(got, refs, strict=True))


def assert_bf16_close(got: Sequence[torch.Tensor], refs: Sequence[torch.Tensor]) -> None:
    """A bfloat16 encoder's embeddings are bfloat16 and within :data:`BF16_RTOL` of the
    float32 reference (the worst error is printed, for ``pytest -s``)."""
    rel = worst_relative_error(got, refs)
    print(f"bf16 relative error {rel:.3g}")
    assert all(g.dtype == torch.bfloat16 for g in got), [g.dtype for g in got]
    assert rel < BF16_RTOL, f"bf16 relative error {rel:.3g} vs the float32 reference"
