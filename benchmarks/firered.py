"""FireRedASR-LLM-L on vLLM: merged Qwen2 export vs. LoRA served on the unmerged base.

FireRedASR-LLM-L's ``model.pth.tar`` holds only LoRA tensors for its Qwen2-7B LLM. Two ways
to run it on vLLM are measured on the same workload, in one command:

  merged  ``asrctl setup``'s export: base + alpha/r * B @ A written as a stock checkpoint
  lora    a PEFT adapter folder written from model.pth.tar; vLLM serves the original
          Qwen2 folder with ``enable_lora`` and a ``LoRARequest`` on every request

For each: setup seconds and disk bytes, vLLM load seconds, and throughput. The workload is
benchmarks/throughput.py's (N wav files of 2-30 s, same seed); random weights decode random
lengths, so every utterance generates exactly ceil(4 x audio seconds) tokens, EOS ignored.

  vllm_alone   random prompt embeddings of the real prompt lengths (prefix + audio tokens
               + suffix), same generated token counts: both paths
  end_to_end   asrctl's Transcriber from wav files (merged path only; asrctl has no LoRA
               path)

Each vLLM engine runs in its own subprocess (a 7B engine needs most of the GPU). A few real
prompts (the encoder's embeddings of the first wav files) are decoded greedily by both
engines and their tokens compared.

Usage: python benchmarks/firered.py --workdir /tmp/frbench --size full --n 1000 --out r.json

Split over several commands (each path alone; the same --workdir keeps the fixture, the
audio and each path's tokens, so the last run still compares them):
  python -m asrctl.fixtures fireredasr-llm /tmp/frbench/fireredasr-llm-full --size full
  python benchmarks/firered.py --workdir /tmp/frbench --size full --n 2000 --skip-lora ...
  python benchmarks/firered.py --workdir /tmp/frbench --size full --n 2000 --skip-merged ...
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # benchmarks/throughput.py: the same workload and version report

if TYPE_CHECKING:
    import torch

FAMILY = "fireredasr-llm"
SR = throughput.SR
TOKENS_PER_SECOND = throughput.TOKENS_PER_SECOND
WARMUP = 64  # utterances run before every timer
AGREE_PROMPTS = 4  # real prompts decoded by both engines
AGREE_TOKENS = 32  # tokens generated per real prompt
LORA_NAME, LORA_ID = "firered", 1


# -- setup: fixture, merged export, LoRA adapter ----------------------------------------


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def ensure_fixture(workdir: Path, size: str) -> tuple[Path, dict[str, Any]]:
    """The random-weight FireRed checkpoint, generated unless complete already."""
    from asrctl.fixtures import make_fixture

    model = workdir / f"{FAMILY}-{size}"
    if (model / "config.yaml").exists():  # written last by the generator
        return model, {"path": str(model), "generated": False}
    t0 = time.perf_counter()
    make_fixture(FAMILY, model, size=size, seed=0)
    return model, {
        "path": str(model),
        "generated": True,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def setup_merged(model: Path) -> dict[str, Any]:
    """``asrctl setup``'s library call, forced to rebuild: check, hash, merge, write."""
    from asrctl.export import prepare

    t0 = time.perf_counter()
    prepared = prepare(model, force=True)
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 2),
        "disk_bytes": folder_bytes(prepared.llm_dir),
        "llm_dir": str(prepared.llm_dir),
        "scope": "asrctl.export.prepare(force=True): check the folder, hash sources, "
        "merge W + alpha/r B@A, write config + tokenizer + model.safetensors",
    }


def lora_tensors(model: Path) -> tuple[dict[str, torch.Tensor], int, Path]:
    """PEFT-named LoRA tensors of model.pth.tar, their rank and the base LLM folder."""
    from asrctl.adapters.fireredasr_llm import FireRedAsrLlmAdapter
    from asrctl.adapters.registry import load_adapter
    from asrctl.errors import AsrctlError

    adapter = cast(FireRedAsrLlmAdapter, load_adapter(model))
    full, lora = adapter.llm_overrides()
    if full or not lora:
        raise AsrctlError("model.pth.tar has full LLM tensors or no LoRA: no adapter to write")
    tensors = {}
    for name, pair in lora.items():  # name: model.layers.N.self_attn.q_proj.weight
        stem = "base_model.model." + name.removesuffix(".weight")
        tensors[f"{stem}.lora_A.weight"] = pair["A"].contiguous()
        tensors[f"{stem}.lora_B.weight"] = pair["B"].contiguous()
    rank = int(next(iter(lora.values()))["A"].shape[0])
    return tensors, rank, adapter.llm_dir.resolve()


def lora_config(rank: int, base: Path) -> dict[str, Any]:
    """PEFT ``adapter_config.json`` of FireRedASR's hard-coded LoRA."""
    from asrctl.adapters.fireredasr_llm import LORA_ALPHA, LORA_TARGETS

    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": rank,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }


def setup_lora(model: Path, dest: Path) -> dict[str, Any]:
    """Write the PEFT adapter folder (temporary folder, then one rename)."""
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    tensors, rank, base = lora_tensors(model)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lora.tmp-", dir=dest.parent))
    (tmp / "adapter_config.json").write_text(json.dumps(lora_config(rank, base), indent=2))
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return {
        "seconds": round(time.perf_counter() - t0, 2),
        "disk_bytes": folder_bytes(dest),
        "adapter_dir": str(dest),
        "base_dir": str(base),
        "rank": rank,
        "tensors": len(tensors),
        "scope": "load + check model.pth.tar, write adapter_config.json + "
        "adapter_model.safetensors; the base Qwen2 folder is served as it is",
    }


# -- workload ----------------------------------------------------------------------------


def audio_tokens(samples: int) -> int:
    """Audio embeddings FireRed splices in for ``samples`` 16 kHz samples (80 ms each)."""
    from asrctl.models.conformer import audio_positions

    return audio_positions(samples, downsample_rate=2)


def text_ids(llm_dir: Path) -> tuple[list[int], list[int]]:
    """Token ids of FireRed's prompt text before and after the audio."""
    from tokenizers import Tokenizer

    from asrctl.adapters.fireredasr_llm import PREFIX, SUFFIX

    tok = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
    return (
        tok.encode(PREFIX, add_special_tokens=False).ids,
        tok.encode(SUFFIX, add_special_tokens=False).ids,
    )


def prompt_lengths(llm_dir: Path, durations: list[float]) -> list[int]:
    """Prompt positions of every utterance: prefix + audio tokens + suffix."""
    prefix, suffix = text_ids(llm_dir)
    return [len(prefix) + audio_tokens(int(SR * d)) + len(suffix) for d in durations]


def embed_rows(llm_dir: Path, ids: list[int]) -> torch.Tensor:
    """Rows of ``model.embed_tokens.weight`` from the base folder's (sharded) weights."""
    from safetensors import safe_open

    from asrctl.adapters.fireredasr_llm import llm_weight_files
    from asrctl.engine import EMBED_KEY

    for path in llm_weight_files(llm_dir):
        with safe_open(str(path), framework="pt") as f:
            if EMBED_KEY in f.keys():
                return f.get_slice(EMBED_KEY)[ids].float()
    raise KeyError(f"{EMBED_KEY} not in {llm_dir}")


def real_prompts(model: Path, scp: Path, k: int) -> tuple[list[torch.Tensor], dict[str, Any]]:
    """Real prompt embeddings of the first ``k`` wav files (encoder on the CPU, fp32),
    and a check of the token-count formula against the encoder, a 30.0 s input included."""
    import numpy as np
    import torch

    from asrctl.adapters.fireredasr_llm import FireRedAsrLlmAdapter
    from asrctl.adapters.registry import load_adapter
    from asrctl.inputs import iter_inputs

    adapter = cast(FireRedAsrLlmAdapter, load_adapter(model))
    encoder = adapter.audio_encoder("cpu", torch.float32)
    waves = [item.load(SR) for item in iter_inputs(scp)[:k]]
    thirty = np.zeros(int(SR * 30.0), dtype=np.float32)
    thirty[::7] = 0.05  # not silence
    with torch.inference_mode():
        audio = encoder([torch.from_numpy(w) for w in [*waves, thirty]])
    prefix, suffix = text_ids(adapter.llm_dir)
    pre, suf = embed_rows(adapter.llm_dir, prefix), embed_rows(adapter.llm_dir, suffix)
    prompts = [torch.cat([pre, a.float(), suf]) for a in audio[:k]]
    formula = [audio_tokens(len(w)) for w in [*waves, thirty]]
    check = {
        "formula_matches_encoder": formula == [len(a) for a in audio],
        "audio_tokens_30s": len(audio[-1]),
        "accepts_30s": 30.0 <= (adapter.family.max_audio_seconds or math.inf),
    }
    return prompts, check


# -- the engine workers (one subprocess each) --------------------------------------------


def start_engine(llm_dir: Path, job: dict[str, Any], lora_rank: int | None) -> Any:
    """vLLM's LLMEngine with asrctl's settings, LoRA on when ``lora_rank`` is given."""
    from vllm import EngineArgs, LLMEngine

    from asrctl.engine import EngineOptions, engine_kwargs

    kwargs = engine_kwargs(llm_dir, job["dtype"], EngineOptions(**job["engine"]))
    if lora_rank is not None:
        kwargs |= {"enable_lora": True, "max_lora_rank": lora_rank, "max_loras": 1}
    return LLMEngine.from_engine_args(EngineArgs(**kwargs))


def run_requests(
    engine: Any,
    prompts: list[torch.Tensor],
    max_tokens: list[int],
    penalty: float,
    lora: Any,
) -> list[list[int]]:
    """Greedy decoding of every prompt (EOS ignored); token ids in input order."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from asrctl.engine import embeds_request

    vocab = int(engine.model_config.get_vocab_size())
    for i, (prompt, n) in enumerate(zip(prompts, max_tokens, strict=True)):
        params = SamplingParams(
            temperature=0.0,
            max_tokens=n,
            ignore_eos=True,
            repetition_penalty=penalty,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        request = embeds_request(prompt, vocab, penalty != 1.0)
        engine.add_request(f"bench-{i}", request, params, lora_request=lora)
    done: dict[str, list[int]] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = list(out.outputs[0].token_ids)
    return [done[f"bench-{i}"] for i in range(len(prompts))]


def random_prompts(lengths: list[int], hidden: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Seeded unit-normal prompt embeddings, as benchmarks/throughput.py uses."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, hidden, generator=gen).to(dtype) for n in lengths]


def vllm_alone(engine: Any, job: dict[str, Any], lora: Any) -> dict[str, Any]:
    """Seconds for the workload from random embeddings, after a warm-up on its head."""
    import torch

    dtype = getattr(torch, job["dtype"])
    hidden = int(engine.model_config.get_hidden_size())
    prompts = random_prompts(job["prompt_lengths"], hidden, dtype)
    max_tokens = [math.ceil(TOKENS_PER_SECOND * d) for d in job["durations"]]
    penalty = job["repetition_penalty"]
    run_requests(engine, prompts[:WARMUP], max_tokens[:WARMUP], penalty, lora)
    t0 = time.perf_counter()
    outputs = run_requests(engine, prompts, max_tokens, penalty, lora)
    seconds = time.perf_counter() - t0
    generated = sum(len(o) for o in outputs)
    return {
        "seconds": round(seconds, 2),
        "rtfx": round(sum(job["durations"]) / seconds, 1),
        "generated_tokens": generated,
        "tokens_per_s": round(generated / seconds),
    }


def agreement_tokens(engine: Any, job: dict[str, Any], lora: Any) -> dict[str, list[list[int]]]:
    """Greedy tokens of the real prompts, without and with the repetition penalty."""
    import torch

    prompts = [p.to(getattr(torch, job["dtype"])) for p in torch.load(job["real_prompts"])]
    out = {}
    for penalty in sorted({1.0, job["repetition_penalty"]}):
        out[str(penalty)] = run_requests(
            engine, prompts, [AGREE_TOKENS] * len(prompts), penalty, lora
        )
    return out


def worker_lora(job: dict[str, Any]) -> dict[str, Any]:
    from vllm.lora.request import LoRARequest

    t0 = time.perf_counter()
    engine = start_engine(Path(job["base_dir"]), job, job["lora_rank"])
    load_s = time.perf_counter() - t0
    lora = LoRARequest(LORA_NAME, LORA_ID, job["adapter_dir"])
    result: dict[str, Any] = {
        "model_load_s": round(load_s, 1),
        "vllm_lora_args": {"enable_lora": True, "max_lora_rank": job["lora_rank"], "max_loras": 1},
    }
    try:
        result["tokens"] = agreement_tokens(engine, job, lora)
        result["tokens_base"] = agreement_tokens(engine, job, None)  # control: LoRA has effect
        result["vllm_alone"] = vllm_alone(engine, job, lora)
    finally:
        shutdown(engine)
    return result


def shutdown(engine: Any) -> None:
    """Stop vLLM's engine core now rather than at interpreter exit."""
    core = getattr(engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def worker_merged(job: dict[str, Any]) -> dict[str, Any]:
    from asrctl.engine import EngineOptions
    from asrctl.transcribe import Transcriber

    t0 = time.perf_counter()
    asr = Transcriber(
        job["model_dir"],
        engine_options=EngineOptions(**job["engine"], dtype=job["dtype"]),
        encoder_dtype=job["encoder_dtype"],
    )
    result: dict[str, Any] = {"model_load_s": round(time.perf_counter() - t0, 1)}
    try:
        result["end_to_end"] = end_to_end(asr, job)
        result["encoder_only"] = encoder_only(asr, job)
        result["variants"] = variants(asr, job)
        result["tokens"] = agreement_tokens(asr.engine.engine, job, None)
        result["vllm_alone"] = vllm_alone(asr.engine.engine, job, None)
    finally:
        asr.close()
    return result


def end_to_end(asr: Any, job: dict[str, Any]) -> dict[str, Any]:
    """asrctl from wav files to text, timed after a warm-up on the first files."""
    from asrctl.inputs import iter_inputs
    from asrctl.results import Failure

    options = _options(job)
    items = iter_inputs(Path(job["scp"]))
    for _ in asr.transcribe(items[:WARMUP], options):
        pass
    if job["cuda"]:
        import torch

        torch.cuda.synchronize()
    t0 = time.perf_counter()
    results = [r for batch in asr.transcribe(items, options) for r in batch]
    seconds = time.perf_counter() - t0
    failed = [r for r in results if isinstance(r, Failure)]
    return {
        "seconds": round(seconds, 2),
        "rtfx": round(sum(job["durations"]) / seconds, 1),
        "utterances": len(results) - len(failed),
        "failed": len(failed),
        "first_failure": failed[0].error if failed else None,
        "scope": "wav files on disk -> text (read, resample, fbank, encoder "
        f"{job['encoder_dtype']}, LLM, detokenize); load and warm-up excluded",
    }


def _options(job: dict[str, Any]) -> Any:
    from asrctl.transcribe import TranscribeOptions

    return TranscribeOptions(
        tokens_per_second=TOKENS_PER_SECOND,
        batch_size=job["batch_size"],
        encoder_batch_size=job["encoder_batch_size"],
        encoder_batch_seconds=job["encoder_batch_seconds"],
        repetition_penalty=job["repetition_penalty"],
    )


def encoder_only(asr: Any, job: dict[str, Any]) -> dict[str, Any]:
    """fbank + encoder + adapter alone on the decoded audio (no LLM)."""
    from asrctl.inputs import iter_inputs

    arrays = [it.load(SR) for it in iter_inputs(Path(job["scp"]))]
    seconds, _ = throughput.encoder_only(
        asr, arrays, job["encoder_batch_size"], job["encoder_batch_seconds"]
    )
    return {"seconds": round(seconds, 2), "scope": "fbank + CMVN + Conformer + adapter"}


def variants(asr: Any, job: dict[str, Any]) -> dict[str, Any]:
    """end_to_end again with other pipeline settings (``--variant``)."""
    from asrctl.inputs import iter_inputs

    items = iter_inputs(Path(job["scp"]))
    audio_s = sum(job["durations"])
    return {
        name: throughput.timed_variant(asr, items, _options(job), settings, audio_s)
        for name, settings in job["variants"].items()
    }


def worker_main(job_path: Path) -> int:
    job = json.loads(job_path.read_text())
    try:
        result = (worker_lora if job["path"] == "lora" else worker_merged)(job)
    except Exception as e:  # record the exact error (vLLM may refuse LoRA + embeddings)
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


def launch(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one engine worker in a fresh Python process; its result or its failure."""
    job_path = workdir / f"job-{job['path']}.json"
    job["result"] = str(workdir / f"result-{job['path']}.json")
    Path(job["result"]).unlink(missing_ok=True)
    job_path.write_text(json.dumps(job))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", str(job_path)])
    wall = round(time.perf_counter() - t0, 1)
    result_path = Path(job["result"])
    if not result_path.exists():
        return {"error": f"worker exited with {proc.returncode} and no result", "wall_s": wall}
    return json.loads(result_path.read_text()) | {"worker_wall_s": wall}


# -- comparison and report ----------------------------------------------------------------


def compare_tokens(merged: dict, lora: dict, base: dict | None) -> dict[str, Any]:
    """Per penalty: identical sequences and the first differing position of each prompt;
    ``base`` (the LoRA engine without its adapter) shows whether the adapter changes them."""
    report: dict[str, Any] = {}
    for penalty, seqs in merged.items():
        other = lora.get(penalty, [])
        report[f"repetition_penalty_{penalty}"] = {
            "identical": sum(a == b for a, b in zip(seqs, other, strict=False)),
            "prompts": len(seqs),
            "first_mismatch": [first_mismatch(a, b) for a, b in zip(seqs, other, strict=False)],
            "base_without_lora_differs": None if base is None else base.get(penalty) != other,
            "merged": seqs,
            "lora": other,
        }
    report["all_identical"] = all(
        v["identical"] == v["prompts"] for k, v in report.items() if k.startswith("repetition")
    )
    return report


def first_mismatch(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token (or of the shorter end), None when equal."""
    if a == b:
        return None
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def path_summary(result: dict[str, Any], setup: dict[str, Any]) -> dict[str, Any]:
    out = {"setup": setup} | {k: v for k, v in result.items() if not k.startswith("tokens")}
    out["setup"]["disk_gib"] = round(setup["disk_bytes"] / 2**30, 3)
    return out


def run_path(name: str, model: Path, job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Set one path up, run its worker, keep its tokens for a later comparison."""
    if name == "merged":
        setup = setup_merged(model)
    else:
        setup = setup_lora(model, workdir / "lora-adapter")
        job = job | {"adapter_dir": setup["adapter_dir"], "lora_rank": setup["rank"]}
    tokens_path(workdir, name).unlink(missing_ok=True)
    result = launch(job | {"path": name}, workdir)
    if "tokens" in result:
        saved = {k: v for k, v in result.items() if k.startswith("tokens")}
        tokens_path(workdir, name).write_text(json.dumps(saved | {"key": job["agree_key"]}))
    return path_summary(result, setup)


def tokens_path(workdir: Path, name: str) -> Path:
    return workdir / f"tokens-{name}.json"


def token_agreement(workdir: Path, key: str) -> dict[str, Any] | str:
    """Compare the paths' tokens: from this run, or a split run's (same fixture, dtype)."""
    found = {}
    for name in ("merged", "lora"):
        path = tokens_path(workdir, name)
        data = json.loads(path.read_text()) if path.exists() else {}
        if data.get("key") != key:
            return f"not run: no {name} tokens for {key} in {workdir}"
        found[name] = data
    lora = found["lora"]
    return compare_tokens(found["merged"]["tokens"], lora["tokens"], lora.get("tokens_base"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--size", choices=("tiny", "full"), default="full")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-model-len", type=int, default=1024, help="30 s: ~390-position prompt")
    ap.add_argument("--max-num-seqs", type=int, default=None, help="default: asrctl's (GPU 1024)")
    ap.add_argument("--gpu-memory-utilization", type=float, help="default 0.8 on a GPU")
    ap.add_argument("--enforce-eager", action="store_true", help="CPU smoke runs")
    ap.add_argument("--batch-size", type=int, default=256, help="end to end: files per batch")
    ap.add_argument("--encoder-batch-size", type=int, default=16)
    ap.add_argument("--encoder-batch-seconds", type=float, default=None, help="None: off")
    ap.add_argument("--variant", action="append", default=[], help="as throughput.py's")
    ap.add_argument("--encoder-dtype", default="float32")
    ap.add_argument("--repetition-penalty", type=float, default=3.0, help="FireRed's default")
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--skip-merged", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.worker and not (args.workdir and args.out):
        ap.error("--workdir and --out are required")
    return args


def engine_settings(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    """EngineOptions fields shared by both workers (the encoder shares the GPU: 0.8)."""
    util = args.gpu_memory_utilization or (0.8 if cuda else None)
    return {
        "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs,
        "gpu_memory_utilization": util,
        "enforce_eager": args.enforce_eager,
    }


def make_job(args: argparse.Namespace, model: Path, scp: Path, durations: list[float]) -> dict:
    """What both workers need (JSON)."""
    from asrctl.engine import cuda_available, resolve_dtype

    cuda = cuda_available()
    base_dir = (model / "Qwen2-7B-Instruct").resolve()
    dtype = resolve_dtype(base_dir, args.dtype)
    return {
        "model_dir": str(model),
        "base_dir": str(base_dir),
        "scp": str(scp),
        "durations": durations,
        "prompt_lengths": prompt_lengths(base_dir, durations),
        "real_prompts": str(args.workdir / "real_prompts.pt"),
        "agree_key": f"{args.size}/{dtype}/penalty {args.repetition_penalty}",
        "dtype": dtype,
        "engine": engine_settings(args, cuda),
        "repetition_penalty": args.repetition_penalty,
        "batch_size": args.batch_size,
        "encoder_batch_size": args.encoder_batch_size,
        "encoder_batch_seconds": args.encoder_batch_seconds,
        "variants": dict(throughput.parse_variant(v) for v in args.variant),
        "encoder_dtype": args.encoder_dtype,
        "cuda": cuda,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    import torch

    args.workdir.mkdir(parents=True, exist_ok=True)
    model, fixture = ensure_fixture(args.workdir, args.size)
    scp, durations = throughput.make_audio(args.workdir / "audio", args.n, seed=1)
    prompts, checks = real_prompts(model, scp, min(AGREE_PROMPTS, args.n))
    job = make_job(args, model, scp, durations)
    torch.save(prompts, job["real_prompts"])
    names = [n for n, skip in (("merged", args.skip_merged), ("lora", args.skip_lora)) if not skip]
    paths = {name: run_path(name, model, job, args.workdir) for name in names}
    report = {
        "command": " ".join(sys.argv),
        "versions": throughput._versions(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"engine": job["engine"], "tokens_per_second": TOKENS_PER_SECOND},
        "workload": workload(durations, job["prompt_lengths"]),
        "fixture": fixture,
        "checks": checks,
        **paths,
        "token_agreement": token_agreement(args.workdir, job["agree_key"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


def workload(durations: list[float], lengths: list[int]) -> dict[str, Any]:
    audio_s = sum(durations)
    return {
        "utterances": len(durations),
        "audio_seconds": round(audio_s, 1),
        "mean_seconds": round(audio_s / len(durations), 2),
        "max_seconds": max(durations),
        "generated_tokens": sum(math.ceil(TOKENS_PER_SECOND * d) for d in durations),
        "prompt_positions": sum(lengths),
        "max_prompt_positions": max(lengths),
        "warmup_utterances": min(WARMUP, len(durations)),
    }


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
