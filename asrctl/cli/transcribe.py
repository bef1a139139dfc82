"""``asrctl transcribe INPUT... --model DIR``: batch transcription on vLLM."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from asrctl.cli import _output
from asrctl.cli._options import (
    BatchSizeOpt,
    CacheDirOpt,
    DeviceOpt,
    DtypeOpt,
    EnforceEagerOpt,
    GpuMemOpt,
    HotwordsOpt,
    InputsArg,
    LanguageOpt,
    MaxInFlightOpt,
    MaxModelLenOpt,
    MaxNumSeqsOpt,
    MaxTokensOpt,
    ModelOpt,
    NoItnOpt,
    OutputDirOpt,
    ResumeOpt,
    TensorParallelOpt,
)


def split_hotwords(values: Sequence[str] | None) -> tuple[str, ...]:
    """``["a,b", "c"]`` → ``("a", "b", "c")``."""
    return tuple(w.strip() for v in values or () for w in v.split(",") if w.strip())


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[audio]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_output.err,
        transient=False,
    )


def transcribe(
    inputs: InputsArg,
    model: ModelOpt,
    output_dir: OutputDirOpt = None,
    language: LanguageOpt = None,
    hotwords: HotwordsOpt = None,
    no_itn: NoItnOpt = False,
    batch_size: BatchSizeOpt = 64,
    max_in_flight: MaxInFlightOpt = 1024,
    max_tokens: MaxTokensOpt = None,
    resume: ResumeOpt = False,
    device: DeviceOpt = None,
    cache_dir: CacheDirOpt = None,
    dtype: DtypeOpt = "auto",
    tensor_parallel_size: TensorParallelOpt = 1,
    gpu_memory_utilization: GpuMemOpt = None,
    max_model_len: MaxModelLenOpt = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    enforce_eager: EnforceEagerOpt = False,
) -> None:
    """Transcribe audio files, folders, Kaldi data dirs or manifests with a model on vLLM."""
    from asrctl.engine import EngineOptions
    from asrctl.errors import OptionsError
    from asrctl.inputs import iter_inputs
    from asrctl.results import ResultsDir
    from asrctl.transcribe import TranscribeOptions, Transcriber

    if resume and output_dir is None:
        raise OptionsError("--resume needs --output-dir")
    options = TranscribeOptions(
        language=language,
        hotwords=split_hotwords(hotwords),
        itn=not no_itn,
        batch_size=batch_size,
        max_in_flight=max_in_flight,
        max_tokens=max_tokens,
    )
    engine = EngineOptions(
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager,
    )
    items = iter_inputs(inputs)
    with ResultsDir(output_dir, resume=resume) if output_dir else nullcontext() as results:
        done = results.done if results else set()
        todo = [i for i in items if i.key not in done]
        if done:
            _output.info(f"resuming: {len(items) - len(todo)} of {len(items)} keys already done")
        if not todo:
            _output.info("nothing to do")
            return
        with _output.err.status("loading the model…"):
            transcriber = Transcriber(
                model, engine_options=engine, device=device, cache_dir=cache_dir
            )
        with transcriber:
            stats = _run(transcriber, todo, options, results)
    _summary(*stats, output_dir)
    if stats[1]:
        raise typer.Exit(1)


def _run(transcriber, todo, options, results) -> tuple[int, int, float, float]:
    durations = [i.duration() for i in todo]
    total = sum(d for d in durations if d is not None) if None not in durations else None
    n_ok = n_failed = 0
    audio_s = 0.0
    start = time.perf_counter()
    with _progress() as progress:
        of_total = f"/{total:.0f}" if total is not None else ""
        task = progress.add_task("transcribing", total=total, audio=f"0{of_total} s audio")
        for batch in transcriber.transcribe(todo, options):
            for r in batch:
                if hasattr(r, "error"):
                    n_failed += 1
                    _output.error(r.error)
                    continue
                n_ok += 1
                audio_s += r.duration
                if results is None:
                    _output.data(f"{r.key} {r.text}")
            if results is not None:
                results.write(batch)
            progress.update(task, completed=audio_s, audio=f"{audio_s:.0f}{of_total} s audio")
    return n_ok, n_failed, audio_s, time.perf_counter() - start


def _summary(
    n_ok: int, n_failed: int, audio_s: float, wall_s: float, output_dir: Path | None
) -> None:
    rtfx = audio_s / wall_s if wall_s > 0 else float("inf")
    _output.info(
        f"{n_ok} transcribed, {n_failed} failed; {audio_s:.1f} s of audio in "
        f"{wall_s:.1f} s (RTFx {rtfx:.1f}, model load excluded)"
    )
    if output_dir is not None:
        _output.info(
            f"results: {output_dir / 'results.jsonl'}, {output_dir / 'text'}"
            + (f", failures: {output_dir / 'failed.jsonl'}" if n_failed else "")
        )
