"""The audio encoder replayed as CUDA graphs against the eager encoder, on one GPU.

For Fun-ASR-Nano (``--size full``: the released dimensions, random weights; ``tiny`` for
a CPU run of the script's plumbing), no vLLM: for each workload, encoder passes of
waveforms through ``encode`` (fbank, encoder, adaptor) eagerly and then with
``use_graphs`` (asrctl.models.graphs), and reports

- the largest relative difference of any utterance's embeddings between the two,
- the time a pass takes, median of ``--repeat`` after one pass that captures the graph,
- the workload's wall time with graphs, its captures included, and the buckets captured.

Workloads: one 5 s clip (``asrctl serve`` at c=1), and passes of 16 and 48 utterances of
the side-by-side benchmark's lengths (2 s plus an exponential of mean 6 s, capped at
30 s), as the server forms them under load (random order, split by the 960 s budget).
Since round 13 only passes of up to ``GRAPH_PASS_SECONDS`` (240 s) of padded audio are
graphed, as in the server: the pass of 48 (round 13: 1.31x with graphs) runs eagerly.

    python benchmarks/encoder_graphs.py --workdir /tmp/bench --out graphs.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import cast

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput


def workloads(seed: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)

    def clips(seconds) -> list[np.ndarray]:
        return [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds]

    def lengths(n: int) -> np.ndarray:
        return np.clip(2.0 + rng.exponential(6.0, n), 2.0, 30.0)

    return {"c1_5s": clips([5.0]), "pass_16": clips(lengths(16)), "pass_48": clips(lengths(48))}


def timed_passes(encoder, waves, repeat: int, budget: int) -> tuple[float, list]:
    """Median seconds of one ``Pipeline.encode``-like pass (the server's sub-batches of at
    most ``budget`` padded samples)."""
    import torch

    from asrctl.transcribe import encode_sorted

    out: list = []
    times = []
    for _ in range(repeat + 1):  # the first pass captures what it needs
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        t0 = time.perf_counter()
        out = encode_sorted(encoder.encode, waves, len(waves), budget=budget)[0]
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), [o.float().cpu() for o in out]


def largest_difference(eager: list, graphed: list) -> float:
    worst = 0.0
    for a, b in zip(eager, graphed, strict=True):
        worst = max(worst, float((a - b).norm() / a.norm().clamp_min(1e-12)))
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--size", choices=("tiny", "full"), default="full")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from asrctl.adapters.registry import load_adapter
    from asrctl.models.fun_asr_nano import FunAsrNanoAudio
    from asrctl.pipeline import ENCODER_BATCH_SECONDS, apply_encoder_precision, default_device

    device = default_device()
    model = throughput.ensure_fixture(
        "fun-asr-nano", args.workdir / f"fun-asr-nano-{args.size}", args.size
    )
    dtype = apply_encoder_precision("auto", device)
    encoder = cast(FunAsrNanoAudio, load_adapter(model).audio_encoder(device, dtype))
    budget = int(ENCODER_BATCH_SECONDS * 16000)
    results = {}
    with torch.inference_mode():
        eager = {n: timed_passes(encoder, w, args.repeat, budget) for n, w in workloads(0).items()}
        graphs = encoder.use_graphs(budget)
        for name, waves in workloads(0).items():
            t0 = time.perf_counter()
            seconds, out = timed_passes(encoder, waves, args.repeat, budget)
            results[name] = {
                "utterances": len(waves),
                "audio_seconds": round(sum(len(w) for w in waves) / 16000, 2),
                "eager_pass_ms": round(1000 * eager[name][0], 2),
                "graphs_pass_ms": round(1000 * seconds, 2) if graphs else None,
                "speedup": round(eager[name][0] / seconds, 2) if graphs else None,
                "largest_relative_difference": largest_difference(eager[name][1], out),
                "wall_with_capture_s": round(time.perf_counter() - t0, 2),
            }
    record = {
        "command": " ".join(sys.argv),
        "versions": throughput._versions(),
        "device": device,
        "encoder_precision": str(dtype),
        "graphs": graphs,
        "captured_buckets": encoder.graphs.captured if encoder.graphs is not None else [],
        "workloads": results,
        "scope": "Fun-ASR-Nano encode (fbank, encoder, adaptor) per pass, no vLLM; median "
        "of --repeat passes after one that captures; difference: max over utterances of "
        "||graphed - eager|| / ||eager||",
    }
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
