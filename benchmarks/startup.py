"""Cold start: from a fresh process to the first transcript, and where the time goes.

Each variant runs in a fresh Python process (as a user's ``asrctl transcribe`` would): import
asrctl, build the pipeline (setup/export, vLLM start with its compile and CUDA-graph capture,
the audio encoder), transcribe the first file, then the rest of ``--n`` files. Variants:

* ``default``: asrctl's GPU engine settings (CUDA graphs for every batch size up to
  ``max_num_seqs``, in vLLM's steps);
* ``sparse``: CUDA graphs for a short list of sizes (``--sparse-sizes``), each decode step
  padded to the next one;
* ``eager``: no CUDA graphs and no compilation.

The first variant run is also the one that fills vLLM's compile cache on a fresh machine, so
``default`` runs first and again last (``default-warm``).

    python3 benchmarks/startup.py --workdir /tmp/bench --n 200 --out startup.json

The workload (checkpoint and wav files) is benchmarks/throughput.py's, built the same way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SPARSE = "1,2,4,8,16,32,64,128,256,384,512,768,1024"

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from asrctl.engine import EngineOptions
from asrctl.inputs import iter_inputs
from asrctl.transcribe import TranscribeOptions, Transcriber
t_import = time.perf_counter()
model, scp, variant, sizes, dtype, encoder_dtype = sys.argv[1:7]
engine = EngineOptions(
    dtype=dtype,
    max_model_len=512,
    enforce_eager=variant == "eager",
    cuda_graph_sizes=tuple(map(int, sizes.split(","))) if variant == "sparse" else None,
)
asr = Transcriber(model, engine_options=engine, encoder_dtype=encoder_dtype)
t_ready = time.perf_counter()
items = iter_inputs(scp)
options = TranscribeOptions(batch_size=1024, tokens_per_second=4.0)
first = None
n = 0
for batch in asr.transcribe(items, options):
    n += len(batch)
    if first is None:
        first = time.perf_counter()
t_end = time.perf_counter()
asr.close()
print("RESULT " + json.dumps({
    "import_s": round(t_import - t0, 2),
    "pipeline_s": round(t_ready - t_import, 2),
    "startup": {k: v for k, v in vars(asr.pipeline.startup).items()},
    "first_result_s": round(first - t0, 2),
    "all_s": round(t_end - t0, 2),
    "transcribe_s": round(t_end - t_ready, 2),
    "utterances": n,
}))
"""


def run_variant(args: argparse.Namespace, model: Path, scp: Path, variant: str) -> dict:
    began = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(model),
            str(scp),
            variant,
            args.sparse_sizes,
            args.dtype,
            args.encoder_dtype,
        ],
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    wall = round(time.perf_counter() - began, 2)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": proc.stderr[-3000:], "process_s": wall}
    return json.loads(lines[-1][len("RESULT ") :]) | {"process_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", choices=("tiny", "full"), default="full")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--encoder-dtype", default="float32")
    ap.add_argument("--sparse-sizes", default=SPARSE)
    ap.add_argument("--variants", default="default,sparse,default-warm")
    ap.add_argument("--timeout", type=float, default=420)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from throughput import _versions, make_audio

    from asrctl.export import prepare
    from asrctl.fixtures import make_fixture

    model = args.workdir / f"fun-asr-nano-{args.size}"
    if not (model / "model.pt").exists():
        make_fixture("fun-asr-nano", model, size=args.size, seed=0)
    prepare(model)  # the export exists, as after `asrctl setup`
    scp, durations = make_audio(args.workdir / f"audio-{args.n}", args.n, seed=1)
    results = {}
    for name in args.variants.split(","):
        results[name] = run_variant(args, model, scp, name.removesuffix("-warm"))
        print(name, json.dumps(results[name]), flush=True)
    report = {
        "command": " ".join(sys.argv),
        "versions": _versions(),
        "workload": {"utterances": args.n, "audio_seconds": round(sum(durations), 1)},
        "sparse_sizes": args.sparse_sizes,
        "variants": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
