"""Fun-ASR-Nano throughput on one GPU: asrctl end to end, engine-only, and vLLM alone.

Generates everything it needs in --workdir: a random-weight checkpoint in the official
layout (``--size full`` = real dimensions) and N wav files of 2–30 s (mean ≈ 8 s). Random
weights decode random lengths, so the work is fixed: every utterance generates exactly
ceil(4 × audio seconds) tokens, EOS ignored (about the rate of Chinese speech).

Timers (each after a warm-up on the first 64 files, which are also in the timed set):
  end_to_end   wav files on disk → text: read + resample + fbank + encoder + LLM + detokenize
  engine_only  the same with the audio already decoded in memory
  vllm_alone   vLLM generating the same token counts from random prompt embeddings of the
               same lengths: the ceiling the LLM half allows

Variants (``--variant NAME:key=value,...``) time end_to_end again in the same engine with
other pipeline settings. Keys: batch_size, encoder_batch_size, encoder_batch_seconds
(``none``: no bound), max_in_flight, switch_interval (Python's thread switch interval, s),
loader_threads, torch_threads (this process's torch CPU threads: an in-process engine
core's copies of prompt embeddings run on them).
``--py-spy DIR`` samples every thread of asrctl's process and of vLLM's engine core during
end_to_end and vllm_alone (py-spy on PATH) and writes collapsed stacks and a per-function
summary.

Usage: python benchmarks/throughput.py --workdir /tmp/bench --n 2000 --size full --out r.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SR = 16000
TOKENS_PER_SECOND = 4.0


def make_audio(root: Path, n: int, seed: int) -> tuple[Path, list[float]]:
    import soundfile as sf

    rng = np.random.default_rng(seed)
    durations = np.clip(2.0 + rng.exponential(6.0, n), 2.0, 30.0).round(2).tolist()
    (root / "wav").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, d in enumerate(durations):
        path = root / "wav" / f"u{i:05d}.wav"
        if not path.exists():
            sf.write(
                path,
                (0.1 * rng.standard_normal(int(SR * d))).astype(np.float32),
                SR,
                subtype="PCM_16",
            )
        lines.append(f"u{i:05d} {path}")
    (root / "wav.scp").write_text("\n".join(lines) + "\n")
    return root / "wav.scp", durations


def _timed(transcriber, items, options, texts: dict | None = None) -> tuple[float, int]:
    """Seconds and results of one pass; ``texts`` (if given) gets each key's text."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for batch in transcriber.transcribe(items, options):
        n += len(batch)
        if texts is not None:
            texts.update((r.key, r.text) for r in batch if hasattr(r, "text"))
    return time.perf_counter() - t0, n


FIXTURE_DONE = ".fixture-complete"  # written once make_fixture has returned


def ensure_fixture(family: str, model: Path, size: str) -> Path:
    """The random-weight checkpoint of ``family`` in ``model``, generated unless a
    complete one is there (every family's layout: a marker written after generation)."""
    from asrctl.fixtures import make_fixture

    if not (model / FIXTURE_DONE).exists():
        make_fixture(family, model, size=size, seed=0)
        (model / FIXTURE_DONE).write_text(f"{family} {size} seed 0\n")
    return model


def _versions() -> dict:
    import torch
    import vllm

    query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
    try:
        gpu = subprocess.run(query, capture_output=True, text=True).stdout
    except OSError:
        gpu = "none"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "vllm": vllm.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu.strip(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "engine_core_omp_threads": os.environ.get(
            "OMP_NUM_THREADS", "asrctl's default (1)" if torch.cuda.is_available() else "vLLM's"
        ),
    }


def encoder_only(
    transcriber, arrays: list[np.ndarray], batch_size: int, batch_seconds: float | None = None
) -> tuple[float, list]:
    """Seconds for the audio path alone (features, encoder, projector) over all utterances,
    and the number of audio embeddings of each."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    embeds = transcriber.encode(arrays, batch_size, batch_seconds)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, [len(e) for e in embeds]


def load_only(items, threads: int, rate: int) -> float:
    """Seconds to read, check and resample to ``rate`` every file with ``threads`` loader
    threads (as the pipeline's pool does), nothing else."""
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda it: it.load(rate), items):
            pass
    return time.perf_counter() - t0


def alone_work(transcriber, durations: list[float], n_audio: list[int], options) -> tuple:
    """Random prompt embeddings of the pipeline's prompt lengths and the same token counts."""
    import torch

    from asrctl.engine import Decoding

    prefix = transcriber.engine.embed_text(transcriber.adapter.prompt(options.prompt).prefix)
    suffix = transcriber.engine.embed_text(transcriber.adapter.prompt(options.prompt).suffix)
    hidden = prefix.shape[1]
    gen = torch.Generator().manual_seed(0)
    prompts, decodings = [], []
    for d, n in zip(durations, n_audio, strict=True):
        n_prompt = len(prefix) + n + len(suffix)
        prompts.append(torch.randn(n_prompt, hidden, generator=gen).to(transcriber.engine.dtype))
        decodings.append(Decoding(max_tokens=math.ceil(TOKENS_PER_SECOND * d), ignore_eos=True))
    return prompts, decodings


def vllm_alone(transcriber, work: tuple) -> float:
    """vLLM generating the same work from random embeddings of the same prompt lengths."""
    t0 = time.perf_counter()
    transcriber.engine.generate(*work)
    return time.perf_counter() - t0


VARIANT_KEYS = {
    "loader_threads": int,
    "batch_size": int,
    "encoder_batch_size": int,
    "encoder_batch_seconds": float,
    "max_in_flight": int,
    "switch_interval": float,
    "torch_threads": int,
}


ERROR_SAMPLE = 64  # utterances whose embeddings are compared across encoder precisions


def embeddings(asr, arrays, dtype_name: str) -> list:
    """The audio embeddings of ``arrays`` in float32 on the CPU (one encoder pass each)."""
    import torch

    with torch.inference_mode():
        return [e.float().cpu() for e in asr.encode(arrays, 16)]


def relative_error(got: list, want: list) -> dict:
    """||got - want|| / ||want|| per utterance: the worst and the mean."""
    errors = [float((g - w).norm() / w.norm()) for g, w in zip(got, want, strict=True)]
    return {"max": round(max(errors), 5), "mean": round(sum(errors) / len(errors), 5)}


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME:key=value,...`` -> (NAME, {key: value})."""
    name, _, body = text.partition(":")
    settings = {}
    for pair in filter(None, body.split(",")):
        key, _, value = pair.partition("=")
        if key not in VARIANT_KEYS:
            raise SystemExit(f"--variant {text}: unknown key {key!r} ({', '.join(VARIANT_KEYS)})")
        settings[key] = None if value == "none" else VARIANT_KEYS[key](value)
    return name, settings


def timed_variant(asr, items, options, settings: dict, audio_s: float) -> dict:
    """end_to_end again with other pipeline settings (same engine, same files)."""
    import dataclasses

    import torch

    from asrctl import transcribe

    switch = settings.get("switch_interval")
    loaders = settings.get("loader_threads")
    threads = settings.get("torch_threads")
    process_wide = ("switch_interval", "loader_threads", "torch_threads")
    fields = {k: v for k, v in settings.items() if k not in process_wide}
    opts = dataclasses.replace(options, **fields)
    before, loaders_before = sys.getswitchinterval(), transcribe.LOADER_THREADS
    threads_before = torch.get_num_threads()
    if switch is not None:
        sys.setswitchinterval(switch)
    if loaders is not None:
        transcribe.LOADER_THREADS = loaders
    if threads is not None:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        with GpuUtilisation() as util:
            seconds, n = _timed(asr, items, opts)
    finally:
        sys.setswitchinterval(before)
        transcribe.LOADER_THREADS = loaders_before
        torch.set_num_threads(threads_before)
    return {
        "settings": settings,
        "seconds": round(seconds, 2),
        "rtfx": round(audio_s / seconds, 1),
        "utterances": n,
        "gpu_utilisation": util.summary(),
        "gpu_memory_beside_vllm_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if cuda
        else 0.0,
    }


class PySpy:
    """``py-spy record`` of this process and its children (vLLM's engine core) while a
    timer runs: collapsed stacks per thread, plus the functions most often on top."""

    def __init__(self, out_dir: Path | None, seconds: int, name: str = "e2e") -> None:
        self.out_dir, self.seconds, self.name = out_dir, seconds, name
        self.proc: subprocess.Popen | None = None
        self.error = ""

    def __enter__(self) -> PySpy:
        if self.out_dir is None:
            return self
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cmd = ["py-spy", "record", "--pid", str(os.getpid()), "--subprocesses", "--threads",
               "--rate", "200", "--format", "raw", "--duration", str(self.seconds),
               "-o", str(self.out_dir / f"{self.name}.collapsed")]  # fmt: skip
        try:
            self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
            time.sleep(2.0)  # let it attach
        except OSError as e:
            self.error = str(e)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        _, err = self.proc.communicate()
        if self.proc.returncode:
            self.error = err[-2000:]

    def summary(self, top: int = 40) -> dict:
        """Samples per thread, and the functions most often on top (self) and anywhere on
        the stack (inclusive), each labelled with its process (asrctl or vLLM's)."""
        path = (self.out_dir or Path()) / f"{self.name}.collapsed"
        if self.out_dir is None or not path.exists():
            return {"error": self.error or "no py-spy output"}
        threads: dict[str, int] = {}
        own: dict[str, int] = {}
        inclusive: dict[str, int] = {}
        total = 0
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            process, thread, frames = _split_stack(stack.split(";"))
            n = int(count)
            total += n
            _add(threads, f"{process} | {thread}", n)
            if frames:
                _add(own, f"{process} | {frames[-1]}", n)
            for name in {f"{process} | {f}" for f in frames}:
                _add(inclusive, name, n)
        return {
            "samples": total,
            "rate_hz": 200,
            "threads": _ranked(threads, top),
            "top_self": _ranked(own, top),
            "top_inclusive": _ranked(inclusive, top),
        }


def _split_stack(frames: list[str]) -> tuple[str, str, list[str]]:
    """A py-spy stack (``process`` frames nest for children, then ``thread``, then
    functions) -> (innermost process: asrctl or vllm:NAME, thread name, functions)."""
    process, thread, start = "asrctl", "", 0
    for i, frame in enumerate(frames):
        if frame.startswith("process "):
            process = (
                "vllm:" + frame.split("VLLM::")[1].strip('"')
                if "VLLM::" in frame
                else ("asrctl" if i == 0 else "child")
            )
        elif frame.startswith("thread "):
            thread, start = frame.split(": ", 1)[-1], i + 1
            break
    return process, thread, frames[start:]


def _add(counts: dict[str, int], key: str, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


def _ranked(counts: dict[str, int], top: int) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:top])


def _extra_engine_args(args: argparse.Namespace) -> dict:
    extra: dict = {}
    if args.max_num_batched_tokens:
        extra["max_num_batched_tokens"] = args.max_num_batched_tokens
    if args.cudagraph_max:
        extra["compilation_config"] = {"max_cudagraph_capture_size": args.cudagraph_max}
    return extra


class GpuUtilisation:
    """Samples ``nvidia-smi`` GPU utilisation every 100 ms while a timer runs: the share
    of time a kernel was running. Low values mean the GPU waited on the CPU."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.samples: list[int] = []

    def __enter__(self) -> GpuUtilisation:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        try:
            self.proc = subprocess.Popen([*query, "-lms", "100"], stdout=subprocess.PIPE, text=True)
        except OSError:
            self.proc = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        out, _ = self.proc.communicate()
        self.samples = [int(x) for x in out.split() if x.strip().isdigit()]

    def summary(self) -> dict:
        s = self.samples
        if not s:
            return {}
        return {"mean_pct": round(sum(s) / len(s), 1), "samples": len(s)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--family", default="fun-asr-nano", help="fixture family to generate")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", choices=("tiny", "full"), default="full")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--encoder-batch-size", type=int, default=32)
    ap.add_argument("--encoder-batch-seconds", type=float, default=None, help="None: off")
    ap.add_argument("--max-in-flight", type=int, default=1024)
    ap.add_argument("--encoder-dtype", default="float32")
    ap.add_argument("--also-encoder-dtype", default="", help="e.g. bfloat16: time it too")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument(
        "--cudagraph-max",
        type=int,
        default=None,
        help="vLLM's max_cudagraph_capture_size (asrctl's GPU default: max_num_seqs)",
    )
    ap.add_argument("--enforce-eager", action="store_true", help="CPU smoke runs")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="vLLM's engine core in this process (EngineOptions.in_process): one CUDA "
        "context, so the encoder's stream can run beside vLLM's steps",
    )
    ap.add_argument("--cuda-graph-sizes", default="", help="e.g. 1,2,4,...,1024 (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="time end_to_end this many times")
    ap.add_argument(
        "--warmup-all", action="store_true", help="warm up on every file, not the first 64"
    )
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,...")
    ap.add_argument("--py-spy", type=Path, default=None, help="profile end_to_end into DIR")
    ap.add_argument("--texts", type=Path, default=None, help="write end_to_end's texts (JSON)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    variants = dict(parse_variant(v) for v in args.variant)

    import torch

    from asrctl.engine import EngineOptions
    from asrctl.inputs import from_arrays, iter_inputs
    from asrctl.pipeline import apply_encoder_precision
    from asrctl.transcribe import TranscribeOptions, Transcriber

    model = ensure_fixture(args.family, args.workdir / f"{args.family}-{args.size}", args.size)
    scp, durations = make_audio(args.workdir / "audio", args.n, seed=1)
    audio_s = sum(durations)
    sizes = (
        tuple(int(x) for x in args.cuda_graph_sizes.split(",")) if args.cuda_graph_sizes else None
    )
    engine = EngineOptions(
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        enforce_eager=args.enforce_eager,
        in_process=args.in_process,
        cuda_graph_sizes=sizes,
        extra=_extra_engine_args(args),
    )
    t = time.perf_counter()
    asr = Transcriber(model, engine_options=engine, encoder_dtype=args.encoder_dtype)
    startup = asr.pipeline.startup
    load_s = time.perf_counter() - t
    options = TranscribeOptions(
        tokens_per_second=TOKENS_PER_SECOND,
        batch_size=args.batch_size,
        encoder_batch_size=args.encoder_batch_size,
        encoder_batch_seconds=args.encoder_batch_seconds,
        max_in_flight=args.max_in_flight,
    )
    items = iter_inputs(scp)
    _timed(asr, items if args.warmup_all else items[:64], options)  # kernels, allocator, cache
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    texts: dict[str, str] = {}
    with GpuUtilisation() as util_e2e:
        e2e_s, n_e2e = _timed(asr, items, options, texts)
    if args.texts:
        args.texts.write_text(json.dumps(texts, ensure_ascii=False))
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    repeats = [round(e2e_s, 2)] + [
        round(_timed(asr, items, options)[0], 2) for _ in range(1, args.repeat)
    ]
    profile = {}
    if args.py_spy:
        with PySpy(args.py_spy, seconds=max(3, math.ceil(e2e_s * 1.5))) as spy:
            _timed(asr, items, options)
        profile = spy.summary()
    timed_variants = {
        name: timed_variant(asr, items, options, settings, audio_s)
        for name, settings in variants.items()
    }
    # at the model's rate (VibeVoice: 24 kHz), as the pipeline's loaders give them: the
    # encoder-only and vLLM-alone timers take these arrays as they are
    arrays = [it.load(asr.sample_rate) for it in items]
    mem_items = from_arrays(arrays, asr.sample_rate)
    eng_s, _ = _timed(asr, mem_items, options)
    enc_s, n_audio = encoder_only(asr, arrays, args.encoder_batch_size, args.encoder_batch_seconds)
    work = alone_work(asr, durations, n_audio, options)
    with GpuUtilisation() as util_alone:
        alone_s = vllm_alone(asr, work)
    profile_alone = {}
    if args.py_spy:
        with PySpy(args.py_spy, seconds=max(3, math.ceil(alone_s * 1.5)), name="alone") as spy:
            vllm_alone(asr, work)
        profile_alone = spy.summary()
    from asrctl import transcribe

    loads = {
        n: round(load_only(items, n, asr.sample_rate), 2)
        for n in sorted({transcribe.LOADER_THREADS, 8})
    }
    other = {}
    reference = embeddings(asr, arrays[:ERROR_SAMPLE], args.encoder_dtype)
    for dtype in filter(None, args.also_encoder_dtype.split(",")):
        asr.encoder = asr.adapter.audio_encoder(
            asr.device, apply_encoder_precision(dtype, asr.device)
        )
        asr.encode([arrays[0]], 1)
        seconds, _ = _timed(asr, items, options)
        other[dtype] = {
            "end_to_end_seconds": round(seconds, 2),
            "rtfx": round(audio_s / seconds, 1),
            "encoder_only_seconds": round(
                encoder_only(asr, arrays, args.encoder_batch_size, args.encoder_batch_seconds)[0], 2
            ),
            f"embedding_rel_error_vs_{args.encoder_dtype}": relative_error(
                embeddings(asr, arrays[:ERROR_SAMPLE], dtype), reference
            ),
        }
    result = {
        "command": " ".join(sys.argv),
        "versions": _versions(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"tokens_per_second": TOKENS_PER_SECOND},
        "workload": {
            "utterances": args.n,
            "audio_seconds": round(audio_s, 1),
            "mean_seconds": round(audio_s / args.n, 2),
            "generated_tokens": sum(math.ceil(TOKENS_PER_SECOND * d) for d in durations),
        },
        "model_load_s": round(load_s, 1),
        "engine_core_client": type(getattr(asr.engine.engine, "engine_core", None)).__name__,
        "startup": dataclasses.asdict(startup),
        "end_to_end": {
            "seconds": round(e2e_s, 2),
            "rtfx": round(audio_s / e2e_s, 1),
            "utterances": n_e2e,
            "gpu_utilisation": util_e2e.summary(),
            "repeats_seconds": repeats,
            "median_rtfx": round(audio_s / sorted(repeats)[len(repeats) // 2], 1),
            "scope": "wav files on disk -> text (read, resample, fbank, encoder, "
            "LLM, detokenize); model load and warm-up excluded",
        },
        "engine_only": {
            "seconds": round(eng_s, 2),
            "rtfx": round(audio_s / eng_s, 1),
            "scope": "decoded audio in memory -> text",
        },
        "vllm_alone": {
            "seconds": round(alone_s, 2),
            "rtfx": round(audio_s / alone_s, 1),
            "gpu_utilisation": util_alone.summary(),
            "scope": "vLLM only: random prompt embeddings of the same lengths, "
            "same generated token counts",
        },
        "encoder_only": {
            "seconds": round(enc_s, 2),
            "scope": f"the family's audio encoder ({args.encoder_dtype}; Fun-ASR-Nano: fbank "
            "+ LFR + encoder + adaptor) on decoded audio, length-sorted batches; no LLM",
        },
        "load_only": {
            "seconds_by_threads": loads,
            "scope": "read + decode + check every wav file in a thread pool; nothing else",
        },
        "other_encoder_dtypes": other,
        "variants": timed_variants,
        "profile_end_to_end": profile,
        "profile_vllm_alone": profile_alone,
        "gpu_memory_beside_vllm_gib": round(peak_gib, 2),
        "gpu_memory_scope": "peak torch allocation in asrctl's process during end_to_end "
        "(features, encoder, buffers); vLLM's own unless its engine core runs in this "
        "process (engine_core_client InprocClient)",
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    asr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
