"""GLM-ASR-Nano's audio path alone (log-mel → encoder → projector), variant by variant.

Random weights of the full-size encoder (32 layers, hidden 1280, ~0.6B) are generated in
this process (``--size tiny``: the test fixture's dimensions, for a CPU smoke); ``--n``
clips of 2–30 s (2 s + Exp(6 s), as benchmarks/throughput.py) go through
``GlmAsrAudio`` exactly as the pipeline calls it (length-sorted sub-batches, at most
``--batch-seconds`` of padded audio each). Per variant: wall seconds of one pass after a
warm-up, RTFx, 30 s windows per second, peak GPU memory, and the embeddings' relative error
‖Δ‖/‖ref‖ per utterance against the float32 padded reference (worst and mean).

Variants (``--variants`` picks some; unknown names are refused):

* ``fp32``: float32, full-precision matmuls, 30 s windows — the original's computation;
* ``tf32``: the same with TensorFloat-32 matmuls (asrctl's GPU default, ``auto``);
* ``tf32-eager-attn`` / ``bf16-eager-attn``: transformers' matmul attention instead of
  ``scaled_dot_product_attention`` (shows what SDPA buys);
* ``tf32-bf16-attn``: TF32 matmuls, attention on bfloat16 copies of q/k/v (flash attention
  has no float32 kernel: float32 SDPA runs without tensor cores);
* ``bf16``: bfloat16 weights (SDPA picks flash attention);
* ``tf32-compiled`` / ``bf16-compiled``: each encoder layer through ``torch.compile``
  (one graph for the 3000-frame windows, shared by the 32 layers, dynamic in the window
  count);
* ``bf16-graphs``: the same with ``mode="reduce-overhead"`` (CUDA graphs);
* ``tf32-trim2`` / ``bf16-trim2``: windows trimmed to 2 s steps (``$ASRCTL_GLM_TRIM=2``,
  not the original's output: the error column says by how much; with random weights
  that error says nothing about recognition, only a real checkpoint's WER can).

    python benchmarks/glm_encoder.py --out glm_encoder.json            # H100: < 3 min
    python benchmarks/glm_encoder.py --size tiny --n 8 --device cpu    # CPU smoke
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's asrctl

SR = 16000
MAX_AUDIO_SECONDS = 655.0
LLM_HIDDEN = {"full": 2048, "tiny": 128}
STARTED = time.perf_counter()


@dataclass(frozen=True)
class Variant:
    dtype: torch.dtype
    matmul: str  # torch.set_float32_matmul_precision
    attention: str = "sdpa"  # transformers' attention implementation
    compile_mode: str | None = None  # None: eager; else torch.compile's mode
    trim_s: float | None = None


VARIANTS = {
    "fp32": Variant(torch.float32, "highest"),
    "tf32": Variant(torch.float32, "high"),
    "tf32-eager-attn": Variant(torch.float32, "high", attention="eager"),
    "tf32-bf16-attn": Variant(torch.float32, "high", attention="asrctl_sdpa_bf16"),
    "bf16": Variant(torch.bfloat16, "highest"),
    "bf16-eager-attn": Variant(torch.bfloat16, "highest", attention="eager"),
    "tf32-trim2": Variant(torch.float32, "high", trim_s=2.0),
    "bf16-trim2": Variant(torch.bfloat16, "highest", trim_s=2.0),
    "tf32-compiled": Variant(torch.float32, "high", compile_mode="default"),
    "bf16-compiled": Variant(torch.bfloat16, "highest", compile_mode="default"),
    "bf16-graphs": Variant(torch.bfloat16, "highest", compile_mode="reduce-overhead"),
}


def build_audio(size: str, device: str, seed: int):
    """``GlmAsrAudio`` with seeded random weights of the fixture's ``size`` (float32)."""
    from asrctl.fixtures._weights import random_tensors
    from asrctl.fixtures.glm_asr import SIZES, audio_config, audio_shapes
    from asrctl.models.glm_asr import GlmAsrAudio, WhisperFeatureOptions, register_attention

    register_attention()
    a, hidden = cast(dict, SIZES[size]["audio"]), LLM_HIDDEN[size]
    config = {"audio_config": audio_config(a)}
    shapes = {
        **audio_shapes(a["hidden"], a["intermediate"], a["layers"]),
        "multi_modal_projector.linear_1.weight": (2 * hidden, a["intermediate"]),
        "multi_modal_projector.linear_1.bias": (2 * hidden,),
        "multi_modal_projector.linear_2.weight": (hidden, 2 * hidden),
        "multi_modal_projector.linear_2.bias": (hidden,),
    }
    state = random_tensors(shapes, seed=seed, dtype=torch.float32)
    return GlmAsrAudio.from_checkpoint(
        config,
        WhisperFeatureOptions(),
        state,
        max_audio_seconds=MAX_AUDIO_SECONDS,
        device=device,
        dtype=torch.float32,
    )


def make_clips(n: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    durations = np.clip(2.0 + rng.exponential(6.0, n), 2.0, 30.0)
    return [
        torch.from_numpy((0.1 * rng.standard_normal(int(SR * d))).astype(np.float32))
        for d in durations
    ]


def sub_batches(waves: list[torch.Tensor], max_count: int, max_seconds: float) -> list[list[int]]:
    """Length-sorted batches of at most ``max_count`` clips and ``max_seconds`` padded."""
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    out: list[list[int]] = [[]]
    for i in order:
        longest = len(waves[i]) / SR  # sorted: the newcomer is the longest
        if out[-1] and (len(out[-1]) >= max_count or (len(out[-1]) + 1) * longest > max_seconds):
            out.append([])
        out[-1].append(i)
    return out


def _layer_step(layer, hidden, position_embeddings):
    return layer(hidden, position_embeddings=position_embeddings)


def compile_tower(tower, mode: str) -> None:
    """Run every encoder layer through one compiled function (``tower.forward`` replaced
    on this instance; the 32 layers share the graph: their parameters are its inputs)."""
    step = torch.compile(_layer_step, mode=mode)
    gelu = torch.nn.functional.gelu

    def forward(input_features, **_kw):
        x = gelu(tower.conv2(gelu(tower.conv1(input_features)))).transpose(1, 2)
        positions = torch.arange(x.shape[1], device=x.device)[None, :]
        pe = tower.rotary_emb(x, position_ids=positions)
        torch._dynamo.mark_dynamic(x, 0)  # the window count: one compile, not one per count
        for layer in tower.layers:
            x = step(layer, x, pe)
            if mode == "reduce-overhead":
                x = x.clone()  # a CUDA graph's output is overwritten by its next replay
        return types.SimpleNamespace(last_hidden_state=tower.norm(x))

    tower.forward = forward


@contextlib.contextmanager
def configured(base, variant: Variant, device: str) -> Iterator:
    """The model as ``variant`` wants it (a copy when it must change), matmul precision
    set; restored afterwards."""
    from asrctl.models.glm_asr import trim_frames

    torch.set_float32_matmul_precision(variant.matmul)
    model = base
    if variant.dtype != torch.float32 or variant.compile_mode or variant.attention != "sdpa":
        model = copy.deepcopy(base).to(variant.dtype)
    saved = (model.trim, model.audio_tower.config._attn_implementation)
    model.audio_tower.config._attn_implementation = variant.attention
    if variant.trim_s is not None:
        model.trim = trim_frames(str(variant.trim_s), model.options)
    if variant.compile_mode:
        compile_tower(model.audio_tower, variant.compile_mode)
    try:
        yield model
    finally:
        torch.set_float32_matmul_precision("highest")
        model.trim, model.audio_tower.config._attn_implementation = saved
        if model is not base:
            del model
            if device.startswith("cuda"):
                torch.cuda.empty_cache()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_pass(model, waves, batches) -> list[torch.Tensor]:
    out: list[torch.Tensor] = [torch.empty(0)] * len(waves)
    for idx in batches:
        for i, emb in zip(idx, model([waves[i] for i in idx]), strict=True):
            out[i] = emb
    return out


def relative_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> dict:
    errors = [
        float((g.float().cpu() - w).norm() / w.norm()) for g, w in zip(got, want, strict=True)
    ]
    return {"max": float(f"{max(errors):.3g}"), "mean": float(f"{np.mean(errors):.3g}")}


def measure(
    name: str, base, waves, batches, device: str, reference: list | None, warmup: int
) -> tuple[dict, list[torch.Tensor]]:
    variant = VARIANTS[name]
    audio_s = sum(len(w) for w in waves) / SR
    with configured(base, variant, device) as model, torch.inference_mode():
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run_pass(model, waves[:warmup], sub_batches(waves[:warmup], 256, 960.0))
        # every trimmed length / the compiled shape once more, on the real batches' shapes
        if variant.compile_mode or variant.trim_s is not None:
            run_pass(model, waves, batches)
        _sync(device)
        warm_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        embeds = run_pass(model, waves, batches)
        _sync(device)
        seconds = time.perf_counter() - t0
        embeds = [e.float().cpu() for e in embeds]
        windows = len(model.windows(waves)[0])
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    row = {
        "seconds": round(seconds, 3),
        "rtfx": round(audio_s / seconds, 1),
        "windows_per_s": round(windows / seconds, 1),
        "warmup_s": round(warm_s, 1),
        "peak_gib": None if peak is None else round(peak, 2),
        "error_vs_fp32": None if reference is None else relative_error(embeds, reference),
    }
    return row, embeds


def versions(device: str) -> dict:
    import transformers

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": device,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        out |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    else:
        out["gpu"] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("full", "tiny"), default="full")
    ap.add_argument("--n", type=int, default=160, help="clips (default 160, ~1,300 s)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    ap.add_argument("--batch-seconds", type=float, default=960.0, help="padded s per call")
    ap.add_argument("--batch-size", type=int, default=256, help="clips per call")
    ap.add_argument("--warmup", type=int, default=16, help="clips in the warm-up pass")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON file (default: stdout only)")
    args = ap.parse_args(argv)
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if "fp32" in names:  # the reference first
        names.remove("fp32")
    names.insert(0, "fp32")

    t0 = time.perf_counter()
    base = build_audio(args.size, args.device, args.seed)
    waves = make_clips(args.n, args.seed)
    batches = sub_batches(waves, args.batch_size, args.batch_seconds)
    audio_s = sum(len(w) for w in waves) / SR
    result = {
        "benchmark": "glm_encoder",
        "size": args.size,
        "clips": args.n,
        "audio_s": round(audio_s, 1),
        "mean_clip_s": round(audio_s / args.n, 2),
        "windows": len(base.windows(waves)[0]),
        "sub_batches": len(batches),
        "versions": versions(args.device),
        "command": " ".join([sys.executable, *sys.argv]),
        "build_s": round(time.perf_counter() - t0, 1),
        "variants": {},
    }
    reference = None
    for name in names:
        log(f"{name} …")
        try:
            row, embeds = measure(name, base, waves, batches, args.device, reference, args.warmup)
        except Exception as e:  # one variant failing (e.g. compile) must not lose the rest
            row, embeds = {"error": f"{type(e).__name__}: {e}"[:500]}, None
        if name == "fp32":
            reference = embeds
        result["variants"][name] = row
        log(f"{name}: {json.dumps(row)}")
    result["total_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
