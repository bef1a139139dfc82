"""side_by_side.py's parts past one batch engine: best (engine replicas sharing the GPU)
and serve (``asrctl serve`` under ``asrctl bench --server``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sbs_common import (
    SCRIPT,
    Child,
    _get,
    _importable,
    common_args,
    kill_group,
    py,
    tail,
    throughput,
)

from asrctl.pipeline import ENCODER_BATCH_SECONDS
from asrctl.server.options import SERVER_ENCODER_BATCH_SIZE, SERVER_ENCODER_GRAPHS

CLIP_SECONDS = 5.0  # the c=1 latency test's clips


def part_best(c: Child) -> dict:
    replicas = {}
    for k in [int(x) for x in c.args.replicas.split(",") if x.strip()]:
        result = c.sbs / f"best-{k}.json"
        result.unlink(missing_ok=True)
        cmd = py(str(SCRIPT), "--child", "best-k", "--k", str(k))
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

    def say(line: str) -> None:
        said.append(line)
        print(line, file=sys.stderr)

    with RayTranscriber(spec, cluster, on_info=say) as replicas:
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
    from asrctl.engine import GPU_MEMORY_UTILIZATION  # what K engines share

    sync = c.sbs / f"replicas-{k}"
    shutil.rmtree(sync, ignore_errors=True)
    sync.mkdir(parents=True)
    share = math.floor(GPU_MEMORY_UTILIZATION / k * 1000) / 1000
    threads = max(1, (os.cpu_count() or 1) // k)
    procs = []
    t0 = time.perf_counter()
    try:
        for i in range(k):
            cmd = py(str(SCRIPT), "--child", "replica", "--k", str(k))
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


# More servers after the defaults, where the part has time left, in this order: the same
# load with other encoder settings (the server encodes in one thread), named
# eb<size>[-s<seconds>][-graphs]; the levels each takes ("c1" as well, or c=128 only).
# Round 12 (H100) measured 16, 64 (the default) and 256 utterances a pass: 64 was best,
# and a fit put ~89 ms of fixed cost on each encoder sub-batch under load, half the
# encoder's time. So: CUDA graphs first (c=1 too: 51 ms of its 103 ms p50 was the
# encoder), then budgets that split passes less.
# Round 13 (H100): graphs (then on every pass up to twice the budget) took c=1's p50 from
# 137.2 to 76.6 ms, and at c=128 they and the 1,920 s passes ran out of memory beside vLLM
# at 0.9; the server now graphs small passes by default, with vLLM at 0.8: eager is the
# comparison, then the larger budgets again.
SERVE_VARIANTS = (
    ("eb64-eager", ["--no-encoder-graphs"], ("c1", "c128")),
    ("eb64-s1920", ["--encoder-batch-seconds", "1920"], ("c128",)),
    ("eb128-s3840", ["--encoder-batch-size", "128", "--encoder-batch-seconds", "3840"], ("c128",)),
)


def part_serve(c: Child) -> dict:
    model, scp, durations = c.fun_asr()
    clips = five_second_clips(c.args.workdir / "audio-5s", c.args.clips)
    levels = [("c1", 1, clips, c.args.clips, 4), ("c128", 128, scp, len(durations), 8)]
    record = serve_levels(c, model, [], levels)
    record["encoder_batch_size"] = SERVER_ENCODER_BATCH_SIZE
    record["encoder_batch_seconds"] = ENCODER_BATCH_SECONDS
    record["encoder_graphs"] = SERVER_ENCODER_GRAPHS
    chosen_names = c.args.serve_variants.split(",")  # checked by side_by_side.py's main
    for name, flags, wanted in SERVE_VARIANTS:
        if name not in chosen_names:
            continue
        if c.left() < 150 or "error" in record:
            record[name] = {"skipped": "no time left in this part"}
            continue
        chosen = [level for level in levels if level[0] in wanted]
        record[name] = serve_levels(c, model, flags, chosen, name)
    record["batch_reference"] = "the cli part's fixed-work RTFx (same 2,000 files, same "
    record["batch_reference"] += "defaults, ceil(4 x seconds) tokens each, end to end)"
    return record | {"versions": throughput._versions(), "commands": c.runner.commands}


def serve_levels(c: Child, model: Path, flags: list[str], levels: list, tag: str = "") -> dict:
    """Start ``asrctl serve`` (defaults plus ``flags``), run each load level against it
    (with what the server's own metrics saw during it), stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = c.sbs / f"serve{'-' + tag if tag else ''}.log"
    cmd = py("-m", "asrctl", "serve", "--model", str(model), "--port", str(port), *flags)
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
        for name, conc, files, n, warmup in levels:
            before = scrape(url)
            label = f"{tag}-{name}" if tag else name
            record[name] = load_level(c, files, url, conc, n, warmup, label)
            record[name]["server_side"] = histogram_means(before, scrape(url))
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
    return record


def scrape(url: str) -> dict[str, float]:
    """The server's ``/metrics`` (asrctl's and vLLM's), parsed; empty if unreadable."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
            return parse_metrics(answer.read().decode("utf-8", "replace"))
    except OSError:
        return {}


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text (prometheus_client's parser): each sample name's value, summed over
    its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + sample.value
    return samples


def histogram_means(before: dict[str, float], after: dict[str, float]) -> dict[str, dict]:
    """Per histogram, what a load level added: observations, their sum and mean (the
    server side of where a request's time went: encoder batches, event-loop lag, vLLM's
    queue, prefill and decode times)."""
    out: dict[str, dict] = {}
    for key, total in after.items():
        if not key.endswith("_count"):
            continue
        name = key[: -len("_count")]
        count = total - before.get(key, 0.0)
        if f"{name}_sum" not in after or count <= 0:
            continue
        summed = after[f"{name}_sum"] - before.get(f"{name}_sum", 0.0)
        out[name] = {"count": int(count), "sum": round(summed, 4), "mean": round(summed / count, 6)}
    return out


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
