"""``asrctl transcribe INPUT... --model DIR``: batch transcription on vLLM."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from asrctl.cli import _output
from asrctl.cli._common import diarize_options, engine_options, transcribe_options
from asrctl.cli._options import (
    BatchSizeOpt,
    CacheDirOpt,
    CpusPerWorkerOpt,
    CudaGraphsOpt,
    DataParallelOpt,
    DeviceOpt,
    DiarizeOpt,
    DtypeOpt,
    EncoderBatchSecondsOpt,
    EncoderDtypeOpt,
    EnforceEagerOpt,
    EnginesPerGpuOpt,
    FormatOpt,
    GpuMemOpt,
    GpusPerWorkerOpt,
    HotwordsOpt,
    InputsArg,
    LanguageOpt,
    MaxInFlightOpt,
    MaxModelLenOpt,
    MaxNumSeqsOpt,
    MaxSpeakersOpt,
    MaxTokensOpt,
    MinSpeakersOpt,
    ModelOpt,
    NoItnOpt,
    NoWordTimesOpt,
    NumSpeakersOpt,
    NumWorkersOpt,
    OutputDirOpt,
    RawTextOpt,
    RayAddressOpt,
    RayOpt,
    RepetitionPenaltyOpt,
    ResumeOpt,
    SeedOpt,
    ShardSizeOpt,
    TemperatureOpt,
    TensorParallelOpt,
    TokensPerSecondOpt,
    TopKOpt,
    TopPOpt,
    VadOpt,
)
from asrctl.pipeline import ENCODER_BATCH_SECONDS

if TYPE_CHECKING:
    from asrctl.pipeline import Startup

INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT)
# With a GPU, an input of less audio than this starts vLLM eagerly (no compilation, no
# CUDA graphs). On an H100 (BENCHMARKS.md, round 5; Fun-ASR-Nano) that starts 21 s
# sooner (38.5 s against 59.9 s) and costs ~1.7 ms per second of audio transcribed
# (4.21 s against 1.47 s for 1,588 s): break-even near 12,000 s. An hour costs ~6 s.
# Such an input also runs vLLM's engine core in this process: on an H200 (round 9) the
# engine was ready 25 s after exec that way, against 46 s with a process of its own.
AUTO_EAGER_SECONDS = 3600.0


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
    batch_size: BatchSizeOpt = None,
    encoder_batch_seconds: EncoderBatchSecondsOpt = ENCODER_BATCH_SECONDS,
    max_in_flight: MaxInFlightOpt = 1024,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = None,
    seed: SeedOpt = None,
    repetition_penalty: RepetitionPenaltyOpt = None,
    raw_text: RawTextOpt = False,
    resume: ResumeOpt = False,
    device: DeviceOpt = None,
    encoder_dtype: EncoderDtypeOpt = "auto",
    cache_dir: CacheDirOpt = None,
    dtype: DtypeOpt = "auto",
    tensor_parallel_size: TensorParallelOpt = 1,
    gpu_memory_utilization: GpuMemOpt = None,
    max_model_len: MaxModelLenOpt = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    enforce_eager: EnforceEagerOpt = False,
    cuda_graphs: CudaGraphsOpt = False,
    format_: FormatOpt = None,
    vad: VadOpt = None,
    no_word_timestamps: NoWordTimesOpt = False,
    tokens_per_second: TokensPerSecondOpt = None,
    diarize: DiarizeOpt = False,
    num_speakers: NumSpeakersOpt = None,
    min_speakers: MinSpeakersOpt = None,
    max_speakers: MaxSpeakersOpt = None,
    data_parallel: DataParallelOpt = 1,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    num_workers: NumWorkersOpt = None,
    gpus_per_worker: GpusPerWorkerOpt = None,
    engines_per_gpu: EnginesPerGpuOpt = 1,
    cpus_per_worker: CpusPerWorkerOpt = 1.0,
    shard_size: ShardSizeOpt = None,
) -> None:
    """Transcribe audio files, folders, Kaldi data dirs or manifests with a model on vLLM."""
    from asrctl.distributed import PipelineSpec, RayTranscriber
    from asrctl.envinfo import process_age
    from asrctl.errors import OptionsError
    from asrctl.inputs import iter_inputs
    from asrctl.segment import LongAudio
    from asrctl.transcribe import Transcriber, resolve_encoder_dtype
    from asrctl.writers import parse_formats

    if resume and output_dir is None:
        raise OptionsError("--resume needs --output-dir")
    if cuda_graphs and enforce_eager:
        raise OptionsError("--cuda-graphs and --enforce-eager contradict each other")
    formats = parse_formats(format_)
    resolve_encoder_dtype(encoder_dtype)  # before the model loads
    speakers = diarize_options(
        diarize=diarize,
        num_speakers=num_speakers,
        min_speakers=min_speakers,
        max_speakers=max_speakers,
    )
    if speakers is not None and vad is False:
        raise OptionsError("--diarize splits every input at pauses (VAD); drop --no-vad")
    options = transcribe_options(
        language=language,
        hotwords=hotwords,
        no_itn=no_itn,
        batch_size=batch_size,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        repetition_penalty=repetition_penalty,
        raw_text=raw_text,
        max_in_flight=max_in_flight,
        word_timestamps=not no_word_timestamps,
        encoder_batch_seconds=encoder_batch_seconds,
        tokens_per_second=tokens_per_second,
    )
    engine = engine_options(
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager,
    )
    cluster = cluster_options(
        ray=ray,
        data_parallel=data_parallel,
        address=ray_address,
        num_workers=num_workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        shard_size=shard_size,
        engines_per_gpu=engines_per_gpu,
    )
    if speakers is not None and cluster is not None:
        raise OptionsError("--diarize runs in this process: not with --ray or --data-parallel")
    items = iter_inputs(inputs)
    subtitles = [f for f in formats if f in ("srt", "vtt")]
    if output_dir is None and subtitles and (len(items) != 1 or len(formats) != 1):
        raise OptionsError(
            f"--format {subtitles[0]} without --output-dir needs one input and one format",
            hint="pass --output-dir OUT to get OUT/<key>.srt / .vtt per input",
        )

    @contextmanager
    def runner(todo) -> Iterator[Any]:
        """What ``_run`` transcribes ``todo`` with: Ray replicas, or the model here."""
        if cluster is not None:
            spec = PipelineSpec(model, engine, device, cache_dir, encoder_dtype, vad)
            with _output.err.status("starting the Ray workers…"):
                replicas = RayTranscriber(spec, cluster, on_info=_output.info)
            with replicas:
                yield replicas
            return
        started = short_input_engine(engine, todo, cuda_graphs=cuda_graphs)
        with _output.err.status("loading the model…"):
            transcriber = Transcriber(
                model,
                engine_options=started,
                device=device,
                cache_dir=cache_dir,
                encoder_dtype=encoder_dtype,
            )
        _output.info(ready_message(transcriber.pipeline.startup, process_age()))
        with transcriber:
            yield LongAudio(transcriber, vad=vad, diarize=speakers)

    try:
        stats = _transcribe(items, options, output_dir, resume, formats, runner)
    except KeyboardInterrupt:
        if output_dir is None:
            raise
        _output.error(
            "interrupted; rerun with --resume to continue",
            f"finished batches are saved in {output_dir}; `--resume` skips their keys",
        )
        raise typer.Exit(INTERRUPTED) from None
    if stats is None:
        return
    _summary(*stats, output_dir)
    if stats[1]:
        raise typer.Exit(1)


def _transcribe(
    items, options, output_dir, resume, formats, runner
) -> tuple[int, int, float, float] | None:
    """Open the output folder, start the model, run; the stats, or None if nothing to do."""
    from asrctl.results import ResultsDir

    with ResultsDir(output_dir, resume=resume) if output_dir else nullcontext() as results:
        if results is not None:
            _recovered(results)
        done = results.done if results else set()
        todo = [i for i in items if i.key not in done]
        if done:
            _output.info(f"resuming: {len(items) - len(todo)} of {len(items)} keys already done")
        if not todo:
            _output.info("nothing to do")
            return None
        with runner(todo) as run_on:
            return _run(run_on, todo, options, results, formats, output_dir)


def _recovered(results) -> None:
    """Say what resuming found in results.jsonl beyond complete rows."""
    from asrctl.results import REJECTED, RESULTS

    recovery = results.recovery
    if recovery is None:
        return
    if recovery.torn:
        _output.info(f"{RESULTS}: dropped a torn last line (an interrupted write); redoing it")
    if recovery.rejected:
        numbers = ", ".join(str(n) for n in recovery.rejected[:10])
        more = f" and {len(recovery.rejected) - 10} more" if len(recovery.rejected) > 10 else ""
        _output.warn(
            f"{results.out_dir / RESULTS}: {len(recovery.rejected)} line(s) are not results "
            f"(garbage or a repeated key: line {numbers}{more}); moved to "
            f"{results.out_dir / REJECTED}, the {recovery.kept} valid rows are kept"
        )


def ready_message(startup: Startup, age: float | None) -> str:
    """Where the start-up went, with the time before loading (Python's start, imports,
    probing the inputs) where the process's age (``age`` s) is known."""
    if age is None:
        return f"model ready: {startup}"
    before = max(0.0, age - startup.total_s)
    return (
        f"model ready: before loading {before:.1f} s (Python, imports, inputs), {startup}; "
        f"{age:.1f} s since the process started"
    )


def short_input_engine(engine, items, *, cuda_graphs: bool):
    """``engine`` with ``enforce_eager`` and ``in_process`` on where a GPU would capture
    CUDA graphs for an input of less than :data:`AUTO_EAGER_SECONDS` of audio (every
    duration known from the headers), unless ``cuda_graphs``; else ``engine`` as it is."""
    from dataclasses import replace

    from asrctl.engine import cuda_available

    if cuda_graphs or engine.enforce_eager or not cuda_available():
        return engine
    total = 0.0
    for item in items:
        seconds = item.duration()
        if seconds is None:
            return engine
        total += seconds
        if total >= AUTO_EAGER_SECONDS:
            return engine
    _output.info(
        f"{total:.0f} s of audio: vLLM starts sooner, without CUDA graphs and (a 16-bit "
        "LLM) in this process (--cuda-graphs: the full start)"
    )
    return replace(engine, enforce_eager=True, in_process=True)


def cluster_options(
    *,
    ray: bool,
    data_parallel: int,
    address: str | None,
    num_workers: int | None,
    gpus_per_worker: float | None,
    cpus_per_worker: float,
    shard_size: int | None,
    engines_per_gpu: int = 1,
):
    """The scale-out settings, or None for the single-process run. ``--data-parallel N``
    is ``--ray --num-workers N`` on a new local cluster; ``--engines-per-gpu K`` alone,
    K replicas per GPU of this host on a new local cluster."""
    from asrctl.distributed import ClusterOptions
    from asrctl.errors import OptionsError

    if data_parallel > 1:
        if ray or address or num_workers:
            raise OptionsError(
                "--data-parallel runs replicas on this host; for a cluster use --ray "
                "--num-workers N instead (not both)"
            )
        return ClusterOptions(
            address="local",
            num_workers=data_parallel,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            shard_size=shard_size,
            engines_per_gpu=engines_per_gpu,
        )
    if not ray and engines_per_gpu > 1:
        return ClusterOptions(
            address="local",
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            shard_size=shard_size,
            engines_per_gpu=engines_per_gpu,
        )
    if not ray:
        if address or num_workers or gpus_per_worker is not None or shard_size:
            raise OptionsError(
                "--ray-address, --num-workers, --gpus-per-worker and "
                "--shard-size need --ray (or --data-parallel N)"
            )
        return None
    return ClusterOptions(
        address=address,
        num_workers=num_workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        shard_size=shard_size,
        engines_per_gpu=engines_per_gpu,
    )


def _run(
    transcriber, todo, options, results, formats=("text", "jsonl"), output_dir=None
) -> tuple[int, int, float, float]:
    from asrctl.results import json_line
    from asrctl.writers import SUBTITLE_FORMATS, transcript_cues, write_subtitles

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
                if output_dir is not None:
                    write_subtitles(output_dir, r, formats)
                elif formats[0] in SUBTITLE_FORMATS:
                    _output.data(SUBTITLE_FORMATS[formats[0]](transcript_cues(r)).rstrip("\n"))
                elif "jsonl" in formats and "text" not in formats:
                    _output.data(json_line(r.to_json()))
                else:
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
