"""side_by_side.py's single-engine parts: start, cli, peers, glm, firered, vibevoice
(each runs in its own child process; see side_by_side.py's docstring)."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from sbs_common import (
    DEFAULT_FLAGS,
    HERE,
    SUMMARY,
    Child,
    _get,
    _importable,
    py,
    tail,
    throughput,
)

# The start part's runs: asrctl's defaults twice (a fresh machine's first start, then
# warm), then each default that round 9 changed turned back, to measure what it saves:
# vLLM's engine core in its own process, and FlashInfer's sampler (whose kernels compile
# on a machine without its JIT cache, which the default runs never filled).
START_RUNS: tuple[tuple[str, dict[str, str]], ...] = (
    ("first", {}),
    ("again", {}),
    ("own_process", {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}),
    ("flashinfer_sampler", {"VLLM_USE_FLASHINFER_SAMPLER": "1"}),
)


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
        "scope": "`asrctl transcribe` on a short input as a process, fixed work "
        "(--tokens-per-second 4): exec to the first result in results.jsonl, and to exit",
    }
    for run, env in START_RUNS:
        out_dir = c.sbs / f"start-{run}"
        # fixed work, as a real model's lengths: random weights never emit EOS, and 16
        # utterances decoded to the 512-token cap put ~8 s before the first result (round 9)
        cmd = fixed_work_cli(c, small, model, out_dir, "-v")
        first = FirstResult(out_dir / "results.jsonl")
        done = c.run(cmd, f"start:{run}", env=env)
        seen = first.stop()
        record[run] = cli_run(done) | {"env": env, "first_result_seconds": seen}
    return record | {"versions": throughput._versions(), "commands": c.runner.commands}


class FirstResult:
    """Seconds from now until ``path`` first holds a line (polled every 50 ms)."""

    def __init__(self, path: Path) -> None:
        self.path, self.t0 = path, time.perf_counter()
        self.seen: float | None = None
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


def startup_lines(lines: list[str], stamps: list[float] | None = None) -> list[str]:
    """vLLM's (and the CLI's) log lines of where start-up time went, each after the
    seconds since exec at which it came (where ``stamps`` has them)."""
    words = (
        *("took", "Graph capturing", "init engine", "compile", "model ready", "seconds"),
        *("Resolved architecture", "Initializing a V1 LLM engine", "Available KV cache"),
        *("hashing source", "s of audio:", "Using FlashInfer"),
    )
    at = stamps if stamps and len(stamps) == len(lines) else [None] * len(lines)
    return [
        (f"+{t:.1f}s " if t is not None else "") + line[-240:]
        for line, t in zip(lines, at, strict=True)
        if any(w in line for w in words)
    ][-30:]


def part_cli(c: Child) -> dict:
    model, scp, durations = c.fun_asr()
    out_dir = c.sbs / "cli-out"
    done = c.run(fixed_work_cli(c, scp, model, out_dir), "cli")
    texts = (out_dir / "text").read_text().splitlines() if (out_dir / "text").exists() else []
    cli = cli_run(done, out_dir) | {
        "scope": "`asrctl transcribe` as a process, from exec to exit (Python start, "
        "imports, vLLM start with compile cache and CUDA graphs, encoder, transcription, "
        "results written); fixed work (--tokens-per-second 4), as the peers",
        "mean_text_chars": round(sum(len(t) for t in texts) / len(texts), 1) if texts else None,
    }
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


def fixed_work_cli(c: Child, inputs: Path, model: Path, out_dir: Path, *flags: str) -> list[str]:
    """``asrctl [flags] transcribe inputs -m model -o out_dir`` under fixed work
    (--tokens-per-second 4), with the smoke run's vLLM settings; ``out_dir`` emptied."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = py("-m", "asrctl", *flags, "transcribe", str(inputs), "-m", str(model))
    cmd += ["-o", str(out_dir), "--tokens-per-second", str(throughput.TOKENS_PER_SECOND)]
    return cmd + c.smoke_flags()


def cli_run(done: dict, out_dir: Path | None = None) -> dict:
    """What one timed ``asrctl transcribe`` process gave: its command, seconds and exit
    code, vLLM's start-up lines, the CLI's summary, the tokens written to ``out_dir``
    (where given) and, where it failed, its output's tail."""
    record = {
        "command": done["command"],
        "process_seconds": done.get("seconds"),
        "exit_code": done.get("exit_code"),
        "vllm_log": startup_lines(done["lines"], done.get("stamps")),
    } | cli_summary(done["lines"])
    if out_dir is not None:
        record |= cli_tokens(out_dir / "results.jsonl")
    if done.get("exit_code") not in (0, None) or "skipped" in done:
        record["output_tail"] = tail(done) if done["lines"] else done.get("skipped")
    return record


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


# The same engine with at most 128 utterances in vLLM at once: the batch figure that
# `serve` at concurrency 128 can reach at best (128 requests in flight), so the serve
# part's gap divides into what 128 sequences allow and what the server adds.
IN_FLIGHT_128 = "in_flight_128"


def fixed_work(c: Child, scp: Path, name: str, texts: Path, *flags: str) -> tuple[dict, Path]:
    """throughput.py with asrctl's defaults (fixed work) and ``flags``, and again with 128
    in flight; its JSON."""
    result = c.sbs / f"throughput-{name}.json"
    result.unlink(missing_ok=True)
    cmd = py(str(HERE / "throughput.py"), "--workdir", str(c.args.workdir), "--n", str(c.args.n))
    cmd += ["--size", c.args.size, *DEFAULT_FLAGS, *flags, "--repeat", "2"]
    cmd += ["--texts", str(texts)]
    cmd += ["--variant", f"{IN_FLIGHT_128}:max_in_flight=128"]
    cmd += ["--dtype", "float32" if c.args.smoke else "auto", "--out", str(result)]
    done = c.run(cmd + (["--enforce-eager"] if c.args.smoke else []), f"cli:{name}")
    if result.exists():
        return without_profiles(json.loads(result.read_text())), texts
    return {"error": done.get("skipped") or "throughput.py failed", "tail": tail(done)}, texts


IN_PROCESS_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # vLLM's; asrctl leaves it as set


def part_inproc(c: Child) -> dict:
    """asrctl's defaults with vLLM's engine core in asrctl's process: one CUDA context, so
    the encoder's stream can run beside vLLM's steps (two processes take turns on the GPU,
    round 13). The CLI as a process (vLLM's variable set, as a user would), then
    throughput.py's fixed work (``--in-process``), its texts against the cli part's."""
    from sbs_scale import compare

    model, scp, durations = c.fun_asr()
    out_dir = c.sbs / "cli-in-process-out"
    done = c.run(fixed_work_cli(c, scp, model, out_dir), "inproc:cli", env=IN_PROCESS_ENV)
    cli = cli_run(done, out_dir) | {"env": IN_PROCESS_ENV}
    texts = c.sbs / "texts-in_process.json"
    # one process, one GIL: the engine loop and the encoder thread take turns every
    # switch interval (Python's 5 ms); once more at 1 ms. And vLLM's per-request copies of
    # prompt embeddings now run on this process's torch CPU threads, a pool as wide as the
    # machine (its own process gets one, ENGINE_CORE_THREADS): once more with one.
    variants = ["switch_1ms:switch_interval=0.001", "threads_1:torch_threads=1"]
    flags = [x for v in variants for x in ("--variant", v)]
    fixed, _ = fixed_work(c, scp, "in_process", texts, "--in-process", *flags)
    default = c.sbs / "texts-default.json"
    same = compare(json.loads(texts.read_text()), default) if texts.exists() else {}
    return {
        "workload": {"utterances": len(durations), "audio_seconds": round(sum(durations), 1)},
        "cli": cli,
        "fixed_work": fixed,
        "identical_to_multiprocess": same,
        "commands": c.runner.commands,
    }


def part_peers(c: Child) -> dict:
    """Both peers (``--lean``: FunASR only), each with half the part's time."""
    return peers_run(c, ["funasr"] if c.args.lean else ["funasr", "native"], "peers")


def part_native(c: Child) -> dict:
    """vLLM's native class alone, with the whole part's time: in round 13 its load outlasted
    half of a 365 s peers part."""
    return peers_run(c, ["native"], "native")


def peers_run(c: Child, peers: list[str], label: str) -> dict:
    c.fun_asr()  # the checkpoint and files, as the other parts have them
    result = c.sbs / f"{label}.json"
    result.unlink(missing_ok=True)
    missing = [m for m in ("funasr",) if not _importable(m)]
    if missing:
        return {"skipped": f"not importable here: {', '.join(missing)}", "versions": {}}
    per_peer = max(60, int((c.left() - 30) / len(peers)))
    cmd = py(str(HERE / "peers.py"), "--workdir", str(c.args.workdir), "--n", str(c.args.n))
    cmd += ["--size", c.args.size, "--max-model-len", "512", "--peer-timeout", str(per_peer)]
    cmd += ["--peers", ",".join(peers)]
    if c.args.smoke:
        cmd += ["--enforce-eager", "--dtype", "float32", "--torchaudio-shim"]
    else:
        cmd += ["--gpu-memory-utilization", "0.5"]
    done = c.run([*cmd, "--out", str(result)], label)
    record: dict = json.loads(result.read_text()) if result.exists() else {"tail": tail(done)}
    for peer in (record.get("peers") or {}).values():
        if isinstance(peer.get("error"), dict):  # keep the cause, not pages of log
            peer["error"].pop("output_tail", None)
    return record | {"commands": c.runner.commands}


def part_glm(c: Child) -> dict:
    workdir = c.args.workdir / "glm"
    _, fixture_s = family_fixture(c, "glm-asr-nano", workdir)
    record = throughput_part(c, "glm-asr-nano", workdir, c.args.glm_n, 1024, "glm")
    return record | {"fixture_seconds": fixture_s, "commands": c.runner.commands}


def family_fixture(c: Child, family: str, workdir: Path) -> tuple[Path, float]:
    """``family``'s checkpoint in ``workdir`` (where throughput.py looks for it), generated
    here once (a rerun reuses it), and the seconds that took."""
    t0 = time.perf_counter()
    model = throughput.ensure_fixture(family, workdir / f"{family}-{c.args.size}", c.args.size)
    return model, round(time.perf_counter() - t0, 1)


def throughput_part(
    c: Child, family: str, workdir: Path, n: int, max_len: int, label: str, *extra: str
):
    result = workdir / "throughput.json"
    result.unlink(missing_ok=True)
    cmd = py(str(HERE / "throughput.py"), "--workdir", str(workdir), "--family", family)
    cmd += ["--n", str(n), "--size", c.args.size, "--max-model-len", str(max_len)]
    cmd += [*DEFAULT_FLAGS, "--dtype", "float32" if c.args.smoke else "auto"]
    cmd += ["--enforce-eager"] if c.args.smoke else []
    done = c.run([*cmd, *extra, "--out", str(result)], label)
    if not result.exists():
        return {"error": done.get("skipped") or "throughput.py failed", "tail": tail(done)}
    return without_profiles(json.loads(result.read_text()))


def without_profiles(record: dict) -> dict:
    """A throughput.py record less its (empty unless --py-spy) profile sections."""
    return {k: v for k, v in record.items() if not k.startswith("profile_")}


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
    # its encoder is the bottleneck (round 14): time bf16 too, with its embeddings' error
    record = throughput_part(
        c,
        "vibevoice-asr",
        workdir,
        c.args.short_n,
        2048,
        "vibevoice",
        "--also-encoder-dtype",
        "bfloat16",
    )
    return record | {"commands": c.runner.commands}


HOUR_S, SMOKE_LONG_S = 3600.0, 60.0


def part_hour(c: Child) -> dict:
    """VibeVoice's single pass: ``asrctl transcribe`` (defaults) on one file of an hour
    (60 s with --smoke), fixed work, timed as a process. A part of its own: the vibevoice
    part's fixture and short clips fill a device call."""
    workdir = c.args.workdir / "vibevoice"
    model, fixture_s = family_fixture(c, "vibevoice-asr", workdir)  # the vibevoice part's
    seconds = SMOKE_LONG_S if c.args.smoke else HOUR_S
    wav = long_noise(workdir / f"long-{seconds:.0f}s.wav", seconds)
    out_dir = c.sbs / "vibevoice-hour"
    done = c.run(fixed_work_cli(c, wav, model, out_dir), "hour")
    return (
        {"audio_seconds": seconds, "fixture_seconds": fixture_s}
        | cli_run(done, out_dir)
        | {
            "versions": throughput._versions(),
            "commands": c.runner.commands,
        }
    )


def long_noise(path: Path, seconds: float) -> Path:
    """One file of seeded noise, ``seconds`` long, written in one-minute pieces."""
    import numpy as np
    import soundfile as sf

    if path.exists():
        return path
    rng = np.random.default_rng(60)
    with sf.SoundFile(path, "w", throughput.SR, 1, subtype="PCM_16") as f:
        for start in range(0, int(seconds), 60):
            piece = min(60.0, seconds - start)
            f.write((0.1 * rng.standard_normal(int(throughput.SR * piece))).astype("f4"))
    return path
