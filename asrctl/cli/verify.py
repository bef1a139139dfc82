"""``asrctl verify [--model DIR] [--smoke]``: a table of readiness checks on stdout."""

from __future__ import annotations

import typer
from rich.table import Table
from rich.text import Text

from asrctl.cli import _output
from asrctl.cli._options import (
    CacheDirOpt,
    DeviceOpt,
    DtypeOpt,
    EnforceEagerOpt,
    GpuMemOpt,
    MaxModelLenOpt,
    MaxNumSeqsOpt,
    MaxTokensOpt,
    OptionalModelOpt,
    SmokeOpt,
    TensorParallelOpt,
)

STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def verify(
    model: OptionalModelOpt = None,
    smoke: SmokeOpt = False,
    cache_dir: CacheDirOpt = None,
    max_tokens: MaxTokensOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = "auto",
    tensor_parallel_size: TensorParallelOpt = 1,
    gpu_memory_utilization: GpuMemOpt = None,
    max_model_len: MaxModelLenOpt = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    enforce_eager: EnforceEagerOpt = False,
) -> None:
    """Check Python, torch, GPUs, vLLM, audio backends and a model directory; exit 1 on failure."""
    from asrctl import verify as checks
    from asrctl.engine import EngineOptions
    from asrctl.errors import OptionsError

    if smoke and model is None:
        raise OptionsError("--smoke needs --model DIR")
    with _output.err.status("checking the environment…") as status:
        results = checks.environment_checks()
        if model is not None:
            status.update("checking the model directory…")
            results += checks.model_checks(model, cache_dir)
        if smoke and model is not None:  # --smoke without --model was refused above
            status.update("smoke test: 1 s of noise through the engine…")
            engine = EngineOptions(
                dtype=dtype,
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                max_num_seqs=max_num_seqs,
                enforce_eager=enforce_eager,
            )
            results.append(
                checks.smoke_check(
                    model,
                    max_tokens=max_tokens or 8,
                    engine_options=engine,
                    device=device,
                    cache_dir=cache_dir,
                )
            )
    table = Table(title="asrctl verify", title_justify="left", show_lines=True)
    for name in ("check", "status", "detail", "fix"):
        table.add_column(name, overflow="fold")
    for c in results:
        table.add_row(c.name, Text(c.status, style=STYLES[c.status]), Text(c.detail), Text(c.fix))
    _output.out.print(table)
    failed = [c.name for c in results if c.status == "fail"]
    if failed:
        _output.error(f"{len(failed)} check(s) failed: {', '.join(failed)}")
        raise typer.Exit(1)
