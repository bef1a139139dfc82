"""Fun-ASR-Nano end to end, three ways on one GPU: asrctl's vLLM plugin, asrctl's pipeline,
vLLM's native FunASR class (GitHub issue 24).

Same checkpoint, same files, same fixed work: benchmarks/peers.py's workload (throughput.py's
random-weight checkpoint ``W/fun-asr-nano-{size}`` and N wav files of 2-30 s), every
utterance generating exactly ceil(4 x audio seconds) tokens, EOS ignored.

Paths (each in its own subprocess, ``plugin.py --path NAME``: one's GPU memory or crash
cannot touch another; an error is recorded and the run goes on):

  plugin  ``LLM(model=W/.../.asrctl/vllm)`` as seed 000 writes it: ``{"prompt": "",
          "multi_modal_data": {"audio": wav path}}`` per file, one ``LLM.generate``; the
          plugin reads and resamples each file (asrctl's loader), computes fbank and runs
          the encoder inside vLLM's engine (its multimodal encoder step), the family's
          prompt around it. vLLM processes find the plugin through its entry point: from a
          source tree, a stand-in distribution on PYTHONPATH (``write_entry_point``).
  asrctl  asrctl's pipeline (``Transcriber`` over ``wav.scp``): loader threads, encoder
          batches in asrctl's process, prompt embeddings into vLLM, streamed.
  native  vLLM's ``FunASRForConditionalGeneration`` on the export peers.py writes
          (``peers.run_native``: its ChatML prompt, (array, rate) per file).

Timers: wav files on disk -> text, after a warm-up on the first 64 files (also in the timed
set); start-up excluded and reported as load_s. vLLM settings: --max-model-len 512 as in
throughput.py, prefix caching and the multimodal processor cache off for every path (the
warm-up files are timed again), the rest each path's default unless given.

Usage (GPU machine, after .gpu/p*/unpack.sh; PYTHONPATH=/tmp/site:$PWD):
  python3 benchmarks/plugin.py --workdir /tmp/bench --n 2000 --size full --out plugin.json
CPU smoke (peers.py's torchaudio shim for the native class):
  PYTHONPATH=$PWD VLLM_CPU_KVCACHE_SPACE=2 python benchmarks/plugin.py --workdir /tmp/pw \\
      --n 8 --size tiny --enforce-eager --dtype float32 --torchaudio-shim --out plugin.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peers  # benchmarks/peers.py: workload, native path, subprocess plumbing
import throughput  # benchmarks/throughput.py: the workload's definition

PATHS = ("plugin", "asrctl", "native")
WARMUP = peers.WARMUP
SCOPES = {
    "plugin": "LLM(model=.asrctl/vllm).generate over wav paths: read + resample (asrctl's "
    "loader), fbank, encoder, LLM, detokenize, all in vLLM; start-up and warm-up excluded",
    "asrctl": "asrctl Transcriber over wav.scp: read + resample + fbank + encoder in asrctl's "
    "process, prompt embeddings into vLLM, detokenize; start-up and warm-up excluded",
    "native": peers.SCOPES["native"],
}


# --- paths ------------------------------------------------------------------------------


def prepare(model: Path) -> Path:
    """``asrctl setup``: the LLM export and the plugin's vLLM folder; returns the latter."""
    from asrctl.adapters.registry import load_adapter
    from asrctl.export import export_llm
    from asrctl.vllm_plugin.setup import write_vllm_dir

    adapter = load_adapter(model)
    return write_vllm_dir(adapter, export_llm(adapter))


def plugin_run(llm: Any, paths: list[Path], counts: list[int]) -> dict:
    from vllm import SamplingParams

    peers.sync()
    t0 = time.perf_counter()
    prompts = [{"prompt": "", "multi_modal_data": {"audio": str(p)}} for p in paths]
    params = [
        SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0) for n in counts
    ]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    peers.sync()
    return {
        "seconds": time.perf_counter() - t0,
        "texts": sum(1 for o in outputs if o.outputs[0].text is not None),
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
    }


def run_plugin(args: argparse.Namespace, model: Path, paths: list[Path], counts: list) -> dict:
    from vllm import LLM

    vllm_dir = prepare(model)
    # as asrctl's engine does: spawn vLLM's engine core (a fork after the export's parallel
    # torch CPU work can hang at start-up)
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    t0 = time.perf_counter()
    llm = LLM(
        model=str(vllm_dir),
        dtype=args.dtype,
        seed=0,
        **peers.engine_settings(args)
        | ({} if args.keep_vllm_caches else {"mm_processor_cache_gb": 0}),
    )
    load_s = time.perf_counter() - t0
    plugin_run(llm, paths[:WARMUP], counts[:WARMUP])
    return plugin_run(llm, paths, counts) | {"load_s": load_s, "vllm_dir": str(vllm_dir)}


def run_asrctl(args: argparse.Namespace, model: Path, paths: list[Path], counts: list) -> dict:
    from asrctl.engine import EngineOptions
    from asrctl.inputs import iter_inputs
    from asrctl.transcribe import TranscribeOptions, Transcriber

    settings = peers.engine_settings(args)
    settings.pop("enable_prefix_caching", None)  # asrctl turns it off itself
    fields = ("max_model_len", "max_num_seqs", "gpu_memory_utilization", "enforce_eager")
    options = EngineOptions(
        dtype=args.dtype,
        **{k: settings.pop(k) for k in fields if k in settings},
        extra=settings,
    )
    items = iter_inputs(paths)
    decode = TranscribeOptions(
        tokens_per_second=throughput.TOKENS_PER_SECOND, word_timestamps=False
    )
    t0 = time.perf_counter()
    with Transcriber(model, engine_options=options) as transcriber:
        load_s = time.perf_counter() - t0
        throughput._timed(transcriber, items[:WARMUP], decode)
        peers.sync()
        t1 = time.perf_counter()
        results = [r for batch in transcriber.transcribe(items, decode) for r in batch]
        peers.sync()
        seconds = time.perf_counter() - t1
    return {
        "seconds": seconds,
        "texts": sum(1 for r in results if getattr(r, "text", None) is not None),
        "generated_tokens": sum(len(getattr(r, "token_ids", ())) for r in results),
        "load_s": load_s,
    }


# --- orchestration -----------------------------------------------------------------------


def child(args: argparse.Namespace) -> int:
    """``--path NAME``: run one path, write its raw result to ``--result``."""
    if not peers.cuda():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    result: dict[str, Any] = {}
    try:
        model, paths, durations = peers.workload(args)
        run = {"plugin": run_plugin, "asrctl": run_asrctl, "native": peers.run_native}
        result |= run[args.path](args, model, paths, peers.token_counts(durations))
        if args.path == "native":
            result["fbank"] = peers.fbank_source("native")
    except BaseException as exc:  # recorded for the report; the run goes on
        result["error"] = peers.error_record(exc)
    args.result.write_text(json.dumps(result, default=str))
    return 0


def path_env(args: argparse.Namespace, model: Path, tmp: Path, path: str) -> tuple[dict, list]:
    """One path's environment: peers.py's stubs for the native class; the plugin's entry
    point (and this checkout) for the plugin path."""
    from asrctl.vllm_plugin.setup import write_entry_point

    env, used = peers.peer_env(args, model, tmp / "stubs", "native" if path == "native" else "-")
    if path == "plugin":
        root = Path(__file__).resolve().parents[1]
        entry = write_entry_point(tmp / "entry-point")
        parts = [str(entry), str(root), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
        used.append("asrctl's vllm.general_plugins entry point (stand-in distribution)")
    return env, used


def spawn(args: argparse.Namespace, path: str, model: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"plugin-{path}-") as tmp:
        env, used = path_env(args, model, Path(tmp), path)
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--path", path]
        cmd += [*peers.child_args(args), "--result", str(result_path)]
        tail: collections.deque = collections.deque(maxlen=40)
        t0 = time.perf_counter()
        rc = peers.stream(cmd, env, tail, args.path_timeout)
        wall = time.perf_counter() - t0
        if result_path.exists():
            result = json.loads(result_path.read_text())
        else:
            result = {"error": {"type": "PathProcessDied", "message": f"exit code {rc}"}}
        if "error" in result:
            result["error"] |= {"root_cause": peers.root_cause(tail), "output_tail": list(tail)}
        return result | {"stubs": used, "process_wall_s": round(wall, 1), "exit_code": rc}


def summarize(raw: dict, path: str, audio_s: float, expected: int) -> dict:
    out = peers.summarize(raw, "native", audio_s, expected) | {"scope": SCOPES[path]}
    if "vllm_dir" in raw:
        out["vllm_dir"] = raw["vllm_dir"]
    return out


def parent(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    model, _, durations = peers.workload(args)
    audio_s = sum(durations)
    expected = sum(peers.token_counts(durations))
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "versions": peers.versions(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"tokens_per_second": throughput.TOKENS_PER_SECOND, "warmup_files": WARMUP},
        "workload": {
            "model_dir": str(model),
            "utterances": args.n,
            "audio_seconds": round(audio_s, 1),
            "mean_seconds": round(audio_s / args.n, 2),
            "generated_tokens": expected,
        },
        "paths": {},
    }
    for path in args.paths.split(","):
        print(f"== path {path}", file=sys.stderr, flush=True)
        result["paths"][path] = summarize(spawn(args, path, model), path, audio_s, expected)
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        # after each path: a run cut short keeps what it measured
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print(args.out.read_text())
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    peers.add_workload_args(ap)
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated: " + ",".join(PATHS))
    ap.add_argument(
        "--torchaudio-shim", action="store_true", help="native: fbank without torchaudio"
    )
    ap.add_argument("--keep-vllm-caches", action="store_true", help="vLLM's default caches")
    ap.add_argument("--path-timeout", type=float, default=1200.0, help="seconds per path")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.path:
        return child(args)
    if args.out is None:
        ap.error("--out is required")
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
