"""``asrctl bench``: accuracy and speed of a model, or a load test of a running server.

Data (the path of ``bench.json``) goes to stdout; the summary table, the worst
utterances and progress go to stderr.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table

from asrctl.cli import _output
from asrctl.cli._common import diarize_options, engine_options, transcribe_options
from asrctl.cli._options import (
    BatchSizeOpt,
    BenchApiKeyOpt,
    BenchOutputDirOpt,
    CacheDirOpt,
    ConcurrencyOpt,
    DeviceOpt,
    DiarizeOpt,
    DtypeOpt,
    EncoderDtypeOpt,
    EnforceEagerOpt,
    GpuMemOpt,
    HotwordsOpt,
    InputsArg,
    LanguageOpt,
    MaxModelLenOpt,
    MaxNumSeqsOpt,
    MaxSpeakersOpt,
    MaxTokensOpt,
    MetricOpt,
    MinSpeakersOpt,
    NoItnOpt,
    NumSpeakersOpt,
    OptionalModelOpt,
    RateOpt,
    RawTextOpt,
    RefOpt,
    RepeatOpt,
    RepetitionPenaltyOpt,
    RequestsOpt,
    RequestTimeoutOpt,
    SeedOpt,
    ServerModelOpt,
    ServerOpt,
    T2sOpt,
    TemperatureOpt,
    TensorParallelOpt,
    TimeLimitOpt,
    TokensPerSecondOpt,
    TopKOpt,
    TopPOpt,
    WarmupOpt,
    WorstOpt,
    WsOpt,
)
from asrctl.errors import OptionsError

DEFAULT_LEVELS = (1, 8, 32, 128)


def bench(
    inputs: InputsArg,
    model: OptionalModelOpt = None,
    ref: RefOpt = None,
    output_dir: BenchOutputDirOpt = Path("bench-out"),
    language: LanguageOpt = None,
    metric: MetricOpt = None,
    t2s: T2sOpt = False,
    warmup: WarmupOpt = 4,
    repeat: RepeatOpt = 3,
    worst: WorstOpt = 5,
    server: ServerOpt = None,
    concurrency: ConcurrencyOpt = None,
    rate: RateOpt = None,
    requests: RequestsOpt = None,
    server_model: ServerModelOpt = None,
    api_key: BenchApiKeyOpt = None,
    ws: WsOpt = False,
    timeout: RequestTimeoutOpt = 120.0,
    time_limit: TimeLimitOpt = 300.0,
    tokens_per_second: TokensPerSecondOpt = None,
    hotwords: HotwordsOpt = None,
    no_itn: NoItnOpt = False,
    batch_size: BatchSizeOpt = None,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    top_k: TopKOpt = None,
    seed: SeedOpt = None,
    repetition_penalty: RepetitionPenaltyOpt = None,
    raw_text: RawTextOpt = False,
    device: DeviceOpt = None,
    encoder_dtype: EncoderDtypeOpt = "auto",
    cache_dir: CacheDirOpt = None,
    dtype: DtypeOpt = "auto",
    tensor_parallel_size: TensorParallelOpt = 1,
    gpu_memory_utilization: GpuMemOpt = None,
    max_model_len: MaxModelLenOpt = None,
    max_num_seqs: MaxNumSeqsOpt = None,
    enforce_eager: EnforceEagerOpt = False,
    diarize: DiarizeOpt = False,
    num_speakers: NumSpeakersOpt = None,
    min_speakers: MinSpeakersOpt = None,
    max_speakers: MaxSpeakersOpt = None,
) -> None:
    """Measure accuracy (CER/WER) and speed (RTFx) of a model, or load-test a server.

    With --diarize, the timing runs again with diarization on and both RTFx are printed."""
    from asrctl.inputs import iter_inputs

    items = iter_inputs(inputs)
    if server is not None:
        from asrctl.bench.loadtest import LoadOptions

        levels = _numbers(concurrency, int, "--concurrency")
        rates = _numbers(rate, float, "--rate")
        load_options = LoadOptions(
            url=server,
            model=server_model,
            concurrency=levels if concurrency is not None else (() if rates else DEFAULT_LEVELS),
            rate=rates,
            requests=requests,
            warmup=warmup,
            timeout_s=timeout,
            time_limit_s=time_limit,
            api_key=api_key,
            language=language,
            ws=ws,
            tokens_per_second=tokens_per_second,
        )
        _server(items, load_options, output_dir)
        return
    if model is None:
        raise OptionsError("bench needs --model DIR (or --server URL for a load test)")
    speakers = diarize_options(
        diarize=diarize,
        num_speakers=num_speakers,
        min_speakers=min_speakers,
        max_speakers=max_speakers,
    )
    from asrctl.bench.offline import BenchOptions

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
    )
    engine = engine_options(
        dtype=dtype,
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        max_num_seqs=max_num_seqs,
        enforce_eager=enforce_eager,
    )
    timing = BenchOptions(warmup=warmup, repeat=repeat)
    refs = _references(ref, inputs, items)
    spec = _spec(refs, language, metric, t2s)
    load = {
        "engine_options": engine,
        "device": device,
        "cache_dir": cache_dir,
        "encoder_dtype": encoder_dtype,
        "diarize": speakers,
    }
    failed = _offline(items, refs, spec, model, options, load, timing, worst, output_dir)
    if failed:
        raise typer.Exit(1)


def _numbers(text: str | None, kind: type, name: str) -> tuple:
    if text is None or not text.strip():
        return ()
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise OptionsError(f"{name} takes comma-separated numbers, got {text!r}") from None


def _references(ref: Path | None, inputs: list[str], items) -> dict[str, str]:
    """--ref, else each Kaldi data dir's whole `text` (keys without audio included), else
    the texts the inputs carry (jsonl manifests)."""
    from asrctl.bench.scoring import read_references

    if ref is not None:
        return read_references(ref)
    refs: dict[str, str] = {}
    for spec in map(Path, inputs):
        folder = spec if spec.is_dir() else spec.parent
        if spec.is_dir() or spec.name in ("wav.scp", "segments"):
            if (folder / "wav.scp").is_file() and (folder / "text").is_file():
                refs |= read_references(folder / "text")
    refs |= {i.key: i.text for i in items if i.text is not None and i.key not in refs}
    if not refs:
        _output.warn("no references (--ref, or `text` beside wav.scp): speed only, no scoring")
    return refs


def _spec(refs: dict[str, str], language: str | None, metric: str | None, t2s: bool):
    from asrctl.bench.scoring import base_language, infer_language, make_spec

    scoring_language = base_language(language)
    if scoring_language is None and refs:
        scoring_language = infer_language(list(refs.values()))
        what = scoring_language or "not CJK (basic normaliser; pass --language en for English)"
        _output.info(f"no --language: references look {what}")
    return make_spec(scoring_language, metric, t2s)


def _offline(items, refs, spec, model, options, load, timing, n_worst, output_dir) -> int:
    """Transcribe and score offline; ``load``: the Transcriber's keyword arguments."""
    from dataclasses import asdict

    from asrctl.bench import report as benchreport
    from asrctl.bench.offline import run_offline
    from asrctl.bench.scoring import score
    from asrctl.transcribe import Transcriber

    speakers = load.pop("diarize", None)
    with _output.err.status("loading the model…"):
        start = time.perf_counter()
        transcriber = Transcriber(model, **load)
        load_s = time.perf_counter() - start
    with transcriber, _output.err.status("benchmarking…") as status:
        from asrctl.segment import LongAudio  # inputs over the model's window: VAD segments

        run = run_offline(
            LongAudio(transcriber), items, options, timing, on_step=_output.steps(status)
        )
        diarized = None
        if speakers is not None:  # the same timing with speaker diarization on
            diarized = _diarized_speed(transcriber, items, options, timing, speakers, status)
    for failure in run.failures:
        _output.error(failure.error)
    scored = score(refs, {t.key: t.text for t in run.transcripts}, spec) if refs else None
    settings = {
        "transcribe": asdict(options),
        "engine": asdict(load["engine_options"]),
        "bench": asdict(timing),
        "device": transcriber.device,
        "encoder_dtype": load["encoder_dtype"],
        "diarize": asdict(speakers) if speakers is not None else None,
    }
    model_info = {
        "dir": str(transcriber.prepared.model_dir),
        "family": transcriber.prepared.family,
        "llm_dir": str(transcriber.prepared.llm_dir),
    }
    report = benchreport.offline_report(
        run, scored, model=model_info, settings=settings, load_s=load_s, n_worst=n_worst
    )
    if diarized is not None:
        report["speed"][DIARIZED] = diarized
    alignments = benchreport.worst_alignments(scored, n_worst) if scored else None
    paths = benchreport.write(output_dir, report, alignments, _chart(report, output_dir))
    _offline_table(report)
    if alignments:
        _output.info(f"\nworst {len(report['worst'])} utterances", style="bold")
        _output.err.print(alignments, markup=False, highlight=False)
    _output.data(str(paths["report"]))
    return len(run.failures)


DIARIZED = "end_to_end_diarized"


def _diarized_speed(transcriber, items, options, timing, speakers, status) -> dict:
    """The end-to-end timer with ``--diarize``: VAD, speaker embeddings and clustering,
    each speaker turn transcribed as its own segment (speakers counted in ``speakers``)."""
    from dataclasses import replace

    from asrctl.bench.offline import run_offline
    from asrctl.segment import LongAudio

    status.update("diarized runs")
    plain = replace(timing, warmup=min(timing.warmup, 1), engine_only=False)
    run = run_offline(LongAudio(transcriber, diarize=speakers), items, options, plain)
    row = run.speeds[0].to_json()
    row["scope"] = "as end-to-end, plus speaker diarization (VAD, voice encoder, clustering; "
    row["scope"] += "each speaker turn transcribed as its own segment)"
    row["speakers"] = {t.key: len({s.speaker for s in t.segments or ()}) for t in run.transcripts}
    return row


def _server(items, options, output_dir: Path) -> None:
    from asrctl.bench import report as benchreport
    from asrctl.bench.loadtest import load_clips, run_load_test

    clips = load_clips(items, pcm=options.ws)
    _output.info(f"load test of {options.url}: {len(clips)} clips")

    def show(level) -> None:
        row = level.to_json()
        _output.info(
            f"{level.label}: {row['ok']}/{row['requests']} ok, {row['requests_per_s']} req/s, "
            f"RTFx {row['rtfx']}, p50 {row['latency_s']['p50']} s, "
            f"client CPU {row['client_cpu']}"
        )

    levels = run_load_test(options, clips, on_level=show)
    report = benchreport.server_report(options, clips, levels)
    paths = benchreport.write(output_dir, report, None, _chart(report, output_dir))
    _server_table(report)
    _output.data(str(paths["report"]))
    if levels and not any(lvl.to_json()["ok"] for lvl in levels):
        raise typer.Exit(1)


def _chart(report: dict, output_dir: Path) -> Path | None:
    from asrctl.bench import plot as benchplot
    from asrctl.bench import report as benchreport

    if not benchplot.available():
        _output.info("chart skipped: matplotlib is not installed (pip install 'asrctl[plot]')")
        return None
    output_dir.mkdir(parents=True, exist_ok=True)
    return benchplot.draw(report, output_dir / benchreport.CHART)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def _offline_table(report: dict) -> None:
    table = Table(title="asrctl bench", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    inputs, speed, acc = report["inputs"], report["speed"], report["accuracy"]
    table.add_row("model", f"{report['model']['dir']} ({report['model']['family']})")
    table.add_row(
        "utterances",
        f"{inputs['transcribed']} transcribed, {len(inputs['failed'])} failed; "
        f"{inputs['audio_s']:.1f} s of audio",
    )
    if acc:
        t, keys = acc["totals"], acc["keys"]
        table.add_row(
            acc["metric"].upper(),
            f"{_pct(t['error_rate'])}  (S={t['substitutions']} D={t['deletions']} "
            f"I={t['insertions']} N={t['n']}; unit: {acc['unit']})",
        )
        table.add_row("normaliser", acc["normaliser"])
        table.add_row("scored", _keys_line(keys))
    for mode in ("end_to_end", "engine_only", DIARIZED):
        if mode in speed:
            s = speed[mode]
            runs = ", ".join(f"{r:.1f}" for r in s["rtfx_runs"] if r is not None)
            table.add_row(f"RTFx {mode.replace('_', '-')}", f"{s['rtfx']:.1f}  (runs: {runs})")
            table.add_row("", _output.literal(s["scope"], style="dim"))
    table.add_row(
        "timing",
        f"median of {speed['repeat']} after {speed['warmup_utterances']} warm-up utterances; "
        f"model load {speed['model_load_s']:.1f} s (excluded)",
    )
    for note in speed["notes"]:
        table.add_row("note", note)
    _output.err.print(table)


def _keys_line(keys: dict) -> str:
    line = f"{keys['scored']} utterances with reference and transcript"
    for side, what in (("missing_hypothesis", "no transcript"), ("missing_reference", "no ref")):
        if keys[side]["count"]:
            first = ", ".join(keys[side]["first"])
            line += f"; {keys[side]['count']} with {what} (first: {first})"
    return line


def _server_table(report: dict) -> None:
    ws = any(lvl["mode"] == "ws" for lvl in report["levels"])
    table = Table(title=f"asrctl bench --server {report['server']}", title_justify="left")
    for name in ("level", "ok/sent", "req/s", "RTFx", "p50 s", "p95 s", "p99 s", "errors"):
        table.add_column(name, justify="right" if name != "errors" else "left")
    if ws:
        table.add_column("first partial p50 s", justify="right")
        table.add_column("final after STOP p50 s", justify="right")
    for lvl in report["levels"]:
        lat = lvl["latency_s"]
        label = f"rate {lvl['rate']:g}/s" if lvl["mode"] == "poisson" else f"c={lvl['concurrency']}"
        errors = ", ".join(f"{k}: {v}" for k, v in lvl["errors"].items()) or "-"
        row = [
            label,
            f"{lvl['ok']}/{lvl['requests']}",
            str(lvl["requests_per_s"]),
            str(lvl["rtfx"]),
            *(str(lat[p]) for p in ("p50", "p95", "p99")),
            errors,
        ]
        if ws:
            row += [str(lvl["first_partial_s"]["p50"]), str(lvl["final_after_stop_s"]["p50"])]
        table.add_row(*row)
    _output.err.print(table)
    _output.info(report["latency_scope"], style="dim")
