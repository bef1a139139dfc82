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

Usage: python benchmarks/throughput.py --workdir /tmp/bench --n 2000 --size full --out r.json
"""

from __future__ import annotations

import argparse
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


def _timed(transcriber, items, options) -> tuple[float, int]:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = sum(len(batch) for batch in transcriber.transcribe(items, options))
    return time.perf_counter() - t0, n


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
    }


def encoder_only(transcriber, arrays: list[np.ndarray], batch_size: int) -> tuple[float, list]:
    """Seconds for the audio path alone (features, encoder, projector) over all utterances,
    and the number of audio embeddings of each."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    embeds = transcriber.encode(arrays, batch_size)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, [len(e) for e in embeds]


def vllm_alone(transcriber, durations: list[float], n_audio: list[int], options) -> float:
    """vLLM generating the same work from random embeddings of the same prompt lengths."""
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
    t0 = time.perf_counter()
    transcriber.engine.generate(prompts, decodings)
    return time.perf_counter() - t0


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
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from asrctl.engine import EngineOptions
    from asrctl.fixtures import make_fixture
    from asrctl.inputs import from_arrays, iter_inputs
    from asrctl.transcribe import TranscribeOptions, Transcriber

    model = args.workdir / f"{args.family}-{args.size}"
    if not (model / "model.pt").exists():
        make_fixture(args.family, model, size=args.size, seed=0)
    scp, durations = make_audio(args.workdir / "audio", args.n, seed=1)
    audio_s = sum(durations)
    engine = EngineOptions(
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        enforce_eager=args.enforce_eager,
        extra=_extra_engine_args(args),
    )
    t = time.perf_counter()
    asr = Transcriber(model, engine_options=engine, encoder_dtype=args.encoder_dtype)
    load_s = time.perf_counter() - t
    options = TranscribeOptions(
        tokens_per_second=TOKENS_PER_SECOND,
        batch_size=args.batch_size,
        encoder_batch_size=args.encoder_batch_size,
    )
    items = iter_inputs(scp)
    _timed(asr, items[:64], options)  # warm-up: kernels, allocator, page cache
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with GpuUtilisation() as util_e2e:
        e2e_s, n_e2e = _timed(asr, items, options)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    arrays = [it.load(SR) for it in items]
    mem_items = from_arrays(arrays, SR)
    eng_s, _ = _timed(asr, mem_items, options)
    enc_s, n_audio = encoder_only(asr, arrays, args.encoder_batch_size)
    with GpuUtilisation() as util_alone:
        alone_s = vllm_alone(asr, durations, n_audio, options)
    other = {}
    for dtype in filter(None, args.also_encoder_dtype.split(",")):
        asr.encoder = asr.adapter.audio_encoder(asr.device, getattr(torch, dtype))
        asr.encode([arrays[0]], 1)
        seconds, _ = _timed(asr, items, options)
        other[dtype] = {
            "end_to_end_seconds": round(seconds, 2),
            "rtfx": round(audio_s / seconds, 1),
            "encoder_only_seconds": round(encoder_only(asr, arrays, args.encoder_batch_size)[0], 2),
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
        "end_to_end": {
            "seconds": round(e2e_s, 2),
            "rtfx": round(audio_s / e2e_s, 1),
            "utterances": n_e2e,
            "gpu_utilisation": util_e2e.summary(),
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
            "scope": f"fbank + LFR + encoder + adaptor ({args.encoder_dtype}) on decoded "
            "audio, length-sorted batches; no LLM",
        },
        "other_encoder_dtypes": other,
        "gpu_memory_beside_vllm_gib": round(peak_gib, 2),
        "gpu_memory_scope": "peak torch allocation in asrctl's process during end_to_end "
        "(features, encoder, buffers); vLLM runs in its own process",
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    asr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
