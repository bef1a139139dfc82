"""Small builders the commands share (the engine options every model-running command takes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asrctl.engine import EngineOptions


def engine_options(
    *,
    dtype: str,
    tensor_parallel_size: int,
    gpu_memory_utilization: float | None,
    max_model_len: int | None,
    max_num_seqs: int | None,
    enforce_eager: bool,
) -> EngineOptions:
    """The vLLM settings from the shared ``Engine (vLLM)`` options."""
    from asrctl.engine import EngineOptions

    return EngineOptions(
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager,
    )
