"""Fun-ASR-Nano peer throughput: FunASR's FunASRNanoVLLM vs vLLM's native FunASR class.

Same weights, same audio, same run (GitHub issue 7): FunASR's own vLLM pipeline and vLLM's
native ``FunASRForConditionalGeneration``.

The workload is benchmarks/throughput.py's, built the same way in --workdir: the fixture
checkpoint ``W/fun-asr-nano-{size}`` (official FunASR layout) and N wav files of 2-30 s
in ``W/audio``. Random weights decode random lengths, so the work is fixed: every
utterance generates exactly ceil(4 x audio seconds) tokens, EOS ignored.

Peers (each in its own subprocess, ``peers.py --peer NAME``, so that one's GPU memory or
crash cannot touch the other; an error is recorded with its traceback and the run goes on):

  funasr  ``funasr.models.fun_asr_nano.inference_vllm.FunASRNanoVLLM`` (funasr 1.4.16) over
          the model directory, ``generate(wav_paths)`` in one call: its audio loading,
          WavFrontend fbank (its defaults, dither 1.0), fp32 encoder in batches of 8,
          prompt embeddings, one ``LLM.generate``. The only change: its ``vllm_engine.generate``
          is wrapped on the instance so that the one SamplingParams it builds is replaced by a
          list of copies (same temperature/top-p/top-k/penalty) with max_tokens = min_tokens
          = n_i and ignore_eos=True, one per request in input order. ``generate`` takes a
          single ``max_new_tokens`` for all inputs; nothing else of its pipeline is touched.
          The wrapper also times the two stages (encode = entry to the wrapper).
  native  vLLM's ``FunASRForConditionalGeneration`` (encoder + adaptor + Qwen3 inside vLLM),
          on an export of the same ``model.pt`` to the layout that class loads (the layout of
          ``FunAudioLLM/Fun-ASR-Nano-2512-vllm``): ``config.json`` = the Qwen3 config with
          ``architectures: [FunASRForConditionalGeneration]`` plus ``audio_encoder_conf`` (and
          ``audio_adaptor_conf``) from ``config.yaml``; ``preprocessor_config.json`` naming
          ``FunASRProcessor`` / ``FunASRFeatureExtractor`` with the ``frontend_conf`` of
          ``config.yaml`` (class defaults otherwise: dither 0, chunk 30 s, padding to 1,000 LFR
          frames); the Qwen3 tokenizer plus the special token ``<|AUDIO|>``; ``model.safetensors``
          holding the ``audio_encoder.*``, ``audio_adaptor.*`` and ``llm.*`` tensors of
          ``model.pt`` under their own names (vLLM's weight mapper renames them). Written once
          to ``W/fun-asr-nano-{size}-vllm-native`` (export seconds reported apart). Requests:
          wav read with soundfile, ``{"prompt": <the class's ChatML prompt with <|AUDIO|>>,
          "multi_modal_data": {"audio": (array, 16000)}}``, SamplingParams(max_tokens=n,
          min_tokens=n, ignore_eos=True, temperature=0), one ``LLM.generate``.

Timers: wav files on disk -> text, after a warm-up on the first 64 files (also in the timed
set); model load (and for funasr its one-time weight split) excluded and reported as load_s.
vLLM settings are each peer's defaults unless given here (--max-model-len 512 as in
throughput.py; --max-num-seqs, --max-num-batched-tokens, --gpu-memory-utilization,
--enforce-eager, --dtype), except that FlashInfer's sampler is off at start-up for both, as
asrctl turns it off (START_ENV; greedy decoding never uses it). Prefix caching is off for
both peers, as in asrctl, and so is the native peer's multimodal processor cache: the
warm-up files are timed again, and cached prefixes or features would make them free
(--keep-vllm-caches: vLLM's defaults).

Stubs (only when needed; their source is in this file, written to a temporary folder that
is put first on the peer's PYTHONPATH so vLLM's own subprocesses see them too):
  --torchaudio-shim  a ``torchaudio`` package with only ``compliance.kaldi.fbank``, computed
                     by kaldi-native-fbank, for machines where torchaudio cannot load (the CPU
                     development machine: torch 2.13+cpu). vLLM's FunASR processor imports
                     torchaudio unconditionally; FunASR 1.4.16 (funasr.utils.fbank) falls back
                     to kaldi-native-fbank by itself. The JSON says which fbank each peer ran.
                     Off by default: without torchaudio the native peer then fails, recorded.
  vLLM plugin        native peer only, where needed (a vLLM general plugin, so it runs in
                     each vLLM process): (a) vLLM's class builds the adaptor with the released
                     model's dimensions (512 -> 2048 -> 1024) whatever the config says, so the
                     tiny fixture cannot load: where ``audio_adaptor_conf`` differs, the adaptor
                     is rebuilt from it; (b) without torchvision, transformers >= 5.19 cannot
                     look up the custom FunASRFeatureExtractor (VIDEO_PROCESSOR_MAPPING is a
                     placeholder): the class is set as ``transformers.FunASRFeatureExtractor``.
                     Full size with torchvision (the GPU machine): vLLM untouched.

Dependencies beyond vLLM's on the GPU machine: ``bash .gpu/peer/install.sh /tmp/site``.

Seen on an H100 (vLLM 0.26, full size, 2,000 files): at vLLM's default
gpu_memory_utilization (0.9) the native peer runs out of memory in its SenseVoice encoder
(every audio padded to 1,000 LFR frames, batches sized by the token budget, the KV cache
having taken the rest); --gpu-memory-utilization 0.5 ran both peers.

Usage (GPU machine, after .gpu/p*/unpack.sh and .gpu/peer/install.sh):
  python3 benchmarks/peers.py --workdir /tmp/bench --n 2000 --size full \\
      --gpu-memory-utilization 0.5 --out peers.json
CPU smoke (bash .gpu/peer/install.sh /tmp/peersite first; PYTHONPATH=/tmp/peersite:$PWD):
  VLLM_CPU_KVCACHE_SPACE=2 python benchmarks/peers.py --workdir /tmp/pw --n 8 --size tiny \\
      --enforce-eager --dtype float32 --torchaudio-shim --out peers.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # benchmarks/throughput.py: workload and versions

SR = throughput.SR
TOKENS_PER_SECOND = throughput.TOKENS_PER_SECOND
WARMUP = 64
PEERS = ("funasr", "native")
AUDIO_TOKEN = "<|AUDIO|>"
FUNASR_DTYPES = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}
SCOPES = {
    "funasr": "FunASRNanoVLLM.generate(wav paths): read, fbank, encoder (batches of 8), "
    "prompt embeddings, vLLM, detokenize; model load and warm-up excluded. encode_s: until "
    "its LLM.generate call; generate_s: from there, incl. its text clean-up",
    "native": "wav read (soundfile) + vLLM FunASRForConditionalGeneration (fbank, encoder, "
    "adaptor, LLM, detokenize inside vLLM); model load, export and warm-up excluded",
}

# --- stubs (source written to a temporary folder on the peer's PYTHONPATH) -------------

# torchaudio stand-in: only what FunASR's WavFrontend and vLLM's FunASR processor call.
# ``torchaudio.load`` is absent on purpose: FunASR then falls back to soundfile.
_TORCHAUDIO_SHIM = {
    "torchaudio/__init__.py": '"""peers.py shim: torchaudio.compliance.kaldi.fbank only."""\n'
    "from . import compliance  # noqa: F401\n__version__ = '0+peers-shim'\n",
    "torchaudio/compliance/__init__.py": "from . import kaldi  # noqa: F401\n",
    "torchaudio/compliance/kaldi.py": '''"""Kaldi fbank through kaldi-native-fbank."""
import kaldi_native_fbank as knf
import numpy as np
import torch


def fbank(waveform, num_mel_bins=23, frame_length=25.0, frame_shift=10.0, dither=0.0,
          energy_floor=1.0, window_type="povey", sample_frequency=16000.0,
          snip_edges=True, **_):
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(sample_frequency)
    opts.frame_opts.frame_length_ms = float(frame_length)
    opts.frame_opts.frame_shift_ms = float(frame_shift)
    opts.frame_opts.dither = float(dither)
    opts.frame_opts.window_type = window_type
    opts.frame_opts.snip_edges = bool(snip_edges)
    opts.mel_opts.num_bins = int(num_mel_bins)
    opts.energy_floor = float(energy_floor)
    samples = waveform.detach().to(torch.float32).reshape(-1).cpu().numpy()
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(float(sample_frequency), samples.tolist())
    fb.input_finished()
    n = fb.num_frames_ready
    if n == 0:
        return torch.zeros(0, int(num_mel_bins))
    return torch.from_numpy(np.stack([fb.get_frame(i) for i in range(n)]).astype(np.float32))
''',
}

# vLLM general plugin (loaded by vLLM in each of its processes), native peer only:
#  - builds the adaptor from ``audio_adaptor_conf`` where that differs from the dimensions
#    vLLM hard-codes (the tiny fixture);
#  - where transformers' VIDEO_PROCESSOR_MAPPING is a placeholder (no torchvision, as on the
#    CPU machine), transformers >= 5.19 fails to look up the custom FunASRFeatureExtractor
#    ("type object 'VIDEO_PROCESSOR_MAPPING' has no attribute '_extra_content'"): expose the
#    class as ``transformers.FunASRFeatureExtractor``, the first place that lookup tries.
_VLLM_PLUGIN = {
    "peers_vllm_stubs.py": '''"""peers.py stubs for vLLM's FunASRForConditionalGeneration."""
NATIVE = {"encoder_dim": 512, "llm_dim": 1024, "ffn_dim": 2048, "n_layer": 2}


def register():
    _sized_adaptor()
    _feature_extractor_lookup()


def _sized_adaptor():
    from vllm.model_executor.models import funasr

    if getattr(funasr.FunASREncoder, "_peers_patched", False):
        return
    original = funasr.FunASREncoder.__init__

    def init(self, *, vllm_config, prefix="", **kwargs):
        original(self, vllm_config=vllm_config, prefix=prefix, **kwargs)
        conf = getattr(vllm_config.model_config.hf_config, "audio_adaptor_conf", None) or {}
        if any(conf.get(k, v) != v for k, v in NATIVE.items()):
            self.audio_adaptor = funasr.Transformer(
                **{k: v for k, v in conf.items() if k != "prefix"},
                prefix=prefix + ".audio_encoder" if prefix else "audio_encoder",
            )

    funasr.FunASREncoder.__init__ = init
    funasr.FunASREncoder._peers_patched = True


def _feature_extractor_lookup():
    import transformers

    try:
        transformers.VIDEO_PROCESSOR_MAPPING._extra_content
        return
    except AttributeError:
        pass
    from vllm.transformers_utils.processors.funasr import FunASRFeatureExtractor

    transformers.FunASRFeatureExtractor = FunASRFeatureExtractor
''',
    "peers_vllm_stubs-0.0.dist-info/METADATA": "Metadata-Version: 2.1\n"
    "Name: peers-vllm-stubs\nVersion: 0.0\n",
    "peers_vllm_stubs-0.0.dist-info/entry_points.txt": "[vllm.general_plugins]\n"
    "peers_vllm_stubs = peers_vllm_stubs:register\n",
}
# The adaptor dimensions vLLM's FunASREncoder hard-codes (the released model's).
_NATIVE_ADAPTOR = {"encoder_dim": 512, "llm_dim": 1024, "ffn_dim": 2048, "n_layer": 2}


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# --- workload ----------------------------------------------------------------------------


def workload(args: argparse.Namespace) -> tuple[Path, list[Path], list[float]]:
    """The throughput.py checkpoint and wavs (created if missing): model dir, paths, seconds."""
    from asrctl.fixtures import make_fixture

    model = args.workdir / f"fun-asr-nano-{args.size}"
    if not (model / "model.pt").exists():
        make_fixture("fun-asr-nano", model, size=args.size, seed=0)
    scp, durations = throughput.make_audio(args.workdir / "audio", args.n, seed=1)
    paths = [Path(line.split(maxsplit=1)[1]) for line in scp.read_text().splitlines() if line]
    return model, paths, durations


def token_counts(durations: list[float]) -> list[int]:
    return [math.ceil(TOKENS_PER_SECOND * d) for d in durations]


def engine_settings(args: argparse.Namespace) -> dict[str, Any]:
    """vLLM ``LLM`` arguments given on the command line (the rest: each peer's default)."""
    given = {
        "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "gpu_memory_utilization": args.gpu_memory_utilization,
    }
    settings = {k: v for k, v in given.items() if v is not None}
    if not args.keep_vllm_caches:
        # As asrctl (engine.py): no prefix caching. The warm-up files are also timed, and
        # cached prefixes (and, native, cached features) would make them free.
        settings["enable_prefix_caching"] = False
    return settings | {"enforce_eager": args.enforce_eager}


def cuda() -> bool:
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def fbank_source(peer: str) -> str:
    if os.environ.get("PEERS_TORCHAUDIO_SHIM"):
        return "kaldi-native-fbank via peers.py torchaudio shim"
    if importlib.util.find_spec("torchaudio") is not None:
        return f"torchaudio.compliance.kaldi (torchaudio {metadata.version('torchaudio')})"
    if peer == "funasr":
        return "kaldi-native-fbank (funasr.utils.fbank's own fallback: no torchaudio)"
    return "none (torchaudio missing)"


# --- peer: FunASR's FunASRNanoVLLM -------------------------------------------------------


class FixedWork:
    """Wraps ``LLM.generate`` on one FunASRNanoVLLM: per-request SamplingParams, stage timer."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.original = llm.generate
        self.counts: list[int] = []
        self.entered = 0.0
        self.generated = 0
        llm.generate = self

    def __call__(self, prompts: list, sampling_params: Any, *args: Any, **kwargs: Any) -> list:
        from vllm import SamplingParams

        self.entered = time.perf_counter()
        if len(prompts) != len(self.counts):
            raise RuntimeError(f"{len(prompts)} prompts for {len(self.counts)} token counts")
        base = sampling_params
        params = [
            SamplingParams(
                max_tokens=n,
                min_tokens=n,
                ignore_eos=True,
                temperature=base.temperature,
                top_p=base.top_p,
                top_k=base.top_k,
                repetition_penalty=base.repetition_penalty,
                skip_special_tokens=base.skip_special_tokens,
            )
            for n in self.counts
        ]
        outputs = self.original(prompts, params, *args, **kwargs)
        self.generated = sum(len(o.outputs[0].token_ids) for o in outputs)
        return outputs


def funasr_run(engine: Any, work: FixedWork, paths: list[Path], counts: list[int]) -> dict:
    work.counts = counts
    sync()
    t0 = time.perf_counter()
    results = engine.generate([str(p) for p in paths], max_new_tokens=max(counts))
    sync()
    t1 = time.perf_counter()
    return {
        "seconds": t1 - t0,
        "encode_s": work.entered - t0,
        "generate_s": t1 - work.entered,
        "texts": len(results),
        "generated_tokens": work.generated,
    }


def run_funasr(args: argparse.Namespace, model: Path, paths: list[Path], counts: list[int]) -> dict:
    import torch

    torch.manual_seed(0)
    settings = engine_settings(args)
    kwargs = {
        k: settings.pop(k) for k in ("max_model_len", "gpu_memory_utilization") if k in settings
    }
    t0 = time.perf_counter()
    from funasr.models.fun_asr_nano.inference_vllm import FunASRNanoVLLM

    engine = FunASRNanoVLLM(
        str(model),
        device="cuda:0" if cuda() else "cpu",
        dtype=FUNASR_DTYPES.get(args.dtype, args.dtype),
        enforce_eager=settings.pop("enforce_eager"),
        vllm_kwargs=settings,
        **kwargs,
    )
    load_s = time.perf_counter() - t0
    work = FixedWork(engine.vllm_engine)
    funasr_run(engine, work, paths[:WARMUP], counts[:WARMUP])
    timed = funasr_run(engine, work, paths, counts)
    return timed | {"load_s": load_s, "version": metadata.version("funasr")}


# --- peer: vLLM's FunASRForConditionalGeneration ------------------------------------------


def export_native(model: Path, out: Path) -> float:
    """Write the native layout of ``model`` to ``out`` once; seconds spent (0 if reused)."""
    source = model / "model.pt"
    stamp = f"{source.stat().st_size} {source.stat().st_mtime_ns}"
    if (out / ".source").exists() and (out / ".source").read_text() == stamp:
        return 0.0
    t0 = time.perf_counter()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    conf = _load_yaml(model / "config.yaml")
    qwen = model / conf.get("llm_conf", {}).get("init_param_path", "Qwen3-0.6B")
    _write_config(conf, qwen, tmp)
    _write_preprocessor(conf, model, tmp)
    _write_tokenizer(qwen, tmp)
    _write_weights(source, tmp)
    (tmp / ".source").write_text(stamp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return time.perf_counter() - t0


def _load_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def _write_config(conf: dict, qwen: Path, out: Path) -> None:
    config = json.loads((qwen / "config.json").read_text())
    config["architectures"] = ["FunASRForConditionalGeneration"]
    config["audio_encoder_conf"] = conf["audio_encoder_conf"]
    config["audio_adaptor_conf"] = conf["audio_adaptor_conf"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if (qwen / "generation_config.json").exists():
        shutil.copy(qwen / "generation_config.json", out / "generation_config.json")


def _write_preprocessor(conf: dict, model: Path, out: Path) -> None:
    frontend = dict(conf.get("frontend_conf", {}))
    cmvn = frontend.get("cmvn_file")
    if cmvn and not Path(cmvn).is_absolute():
        frontend["cmvn_file"] = str((model / cmvn).resolve())
    frontend.setdefault("cmvn_file", None)
    pre = {
        "processor_class": "FunASRProcessor",
        "feature_extractor_type": "FunASRFeatureExtractor",
        "feature_size": frontend.get("n_mels", 80),
        "sampling_rate": frontend.get("fs", SR),
        "hop_length": 160,
        "n_fft": 400,
        "chunk_length": 30,
        "padding_value": 0.0,
        "return_attention_mask": False,
        "frontend_conf": frontend,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))


def _write_tokenizer(qwen: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen))
    tok.add_tokens([AUDIO_TOKEN], special_tokens=True)
    tok.save_pretrained(str(out))


def _write_weights(source: Path, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    state = torch.load(source, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    keep = ("audio_encoder.", "audio_adaptor.", "llm.")
    tensors = {k: v.contiguous().clone() for k, v in state.items() if k.startswith(keep)}
    save_file(tensors, str(out / "model.safetensors"))


def native_prompt() -> str:
    """The ChatML prompt FunASRForConditionalGeneration builds for a transcription."""
    from types import SimpleNamespace

    from vllm.model_executor.models.funasr import FunASRForConditionalGeneration as cls

    params = SimpleNamespace(
        audio=None,
        stt_config=SimpleNamespace(sample_rate=SR),
        language="zh",
        hotwords=None,
        task_type="transcribe",
        request_prompt="",
        to_language=None,
    )
    prompt: Any = cls.get_generation_prompt(cast(Any, params))  # duck-typed params
    return prompt["prompt"]


def native_run(llm: Any, prompt: str, paths: list[Path], counts: list[int]) -> dict:
    import soundfile as sf
    from vllm import SamplingParams

    sync()
    t0 = time.perf_counter()
    requests = []
    for path in paths:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
        if audio.ndim > 1:
            audio = audio.mean(axis=1)
        requests.append({"prompt": prompt, "multi_modal_data": {"audio": (audio, sr)}})
    params = [
        SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0) for n in counts
    ]
    outputs = llm.generate(requests, params, use_tqdm=False)
    sync()
    return {
        "seconds": time.perf_counter() - t0,
        "texts": sum(1 for o in outputs if o.outputs[0].text is not None),
        "generated_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
    }


def run_native(args: argparse.Namespace, model: Path, paths: list[Path], counts: list[int]) -> dict:
    out = model.with_name(model.name + "-vllm-native")
    export_s = export_native(model, out)
    from vllm import LLM

    t0 = time.perf_counter()
    llm = LLM(
        model=str(out),
        dtype=args.dtype,
        limit_mm_per_prompt={"audio": 1},
        seed=0,
        **engine_settings(args) | ({} if args.keep_vllm_caches else {"mm_processor_cache_gb": 0}),
    )
    load_s = time.perf_counter() - t0
    prompt = native_prompt()
    native_run(llm, prompt, paths[:WARMUP], counts[:WARMUP])
    timed = native_run(llm, prompt, paths, counts)
    return timed | {"load_s": load_s, "export_s": export_s, "export_dir": str(out)}


# --- orchestration -----------------------------------------------------------------------


def error_record(exc: BaseException) -> dict:
    lines = traceback.format_exception(exc)
    return {
        "type": type(exc).__name__,
        "message": str(exc)[:2000],
        "traceback": "".join(lines).splitlines()[-25:],
    }


def child(args: argparse.Namespace) -> int:
    """``--peer NAME``: run one peer and write its raw result to ``--result``."""
    if not cuda():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    result: dict[str, Any] = {"fbank": fbank_source(args.peer)}
    try:
        model, paths, durations = workload(args)
        run = run_funasr if args.peer == "funasr" else run_native
        result |= run(args, model, paths, token_counts(durations))
    except BaseException as exc:  # recorded for the report; the run goes on
        result["error"] = error_record(exc)
    args.result.write_text(json.dumps(result, default=str))
    return 0


def native_stub_reasons(model: Path) -> list[str]:
    """Why the native peer needs the vLLM plugin here (empty: it runs vLLM untouched)."""
    reasons = []
    conf = _load_yaml(model / "config.yaml").get("audio_adaptor_conf", {})
    if any(conf.get(k, v) != v for k, v in _NATIVE_ADAPTOR.items()):
        reasons.append("adaptor sized from audio_adaptor_conf (not the released dims)")
    if importlib.util.find_spec("torchvision") is None:
        reasons.append("transformers.FunASRFeatureExtractor set (no torchvision here)")
    return reasons


# Start-up only, as asrctl sets it: both peers decode greedily (temperature 0), which vLLM's
# sampler does without top-k/top-p, but vLLM's start-up runs FlashInfer's top-k/top-p
# sampler once, and on a machine without FlashInfer's JIT cache that took ~100 s (rounds 9
# and 11), more than a peer's share of a side-by-side part (round 12: both peers killed).
START_ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0"}


def peer_env(args: argparse.Namespace, model: Path, stubs: Path, peer: str) -> tuple[dict, list]:
    """Environment of one peer's process, and the stubs it gets."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for name, value in START_ENV.items():  # the user's value wins
        env.setdefault(name, value)
    used = []
    if args.torchaudio_shim:
        write_files(stubs, _TORCHAUDIO_SHIM)
        env["PEERS_TORCHAUDIO_SHIM"] = "1"
        used.append("torchaudio shim (kaldi-native-fbank)")
    if peer == "native":
        reasons = native_stub_reasons(model)
        if reasons:
            write_files(stubs, _VLLM_PLUGIN)
            used += [f"vLLM plugin: {r}" for r in reasons]
    if used:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stubs), env.get("PYTHONPATH")]))
    return env, used


def spawn(args: argparse.Namespace, peer: str, model: Path) -> dict:
    """Run ``peers.py --peer`` in a subprocess; its result, or why there is none."""
    with tempfile.TemporaryDirectory(prefix=f"peers-{peer}-") as tmp:
        env, stubs = peer_env(args, model, Path(tmp) / "stubs", peer)
        result_path = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--peer", peer]
        cmd += [*child_args(args), "--result", str(result_path)]
        tail: collections.deque[str] = collections.deque(maxlen=40)
        t0 = time.perf_counter()
        rc = stream(cmd, env, tail, args.peer_timeout)
        wall = time.perf_counter() - t0
        if result_path.exists():
            result = json.loads(result_path.read_text())
        else:
            result = {"error": {"type": "PeerProcessDied", "message": f"exit code {rc}"}}
        if "error" in result:
            result["error"] |= {"root_cause": root_cause(tail), "output_tail": list(tail)}
        return result | {"stubs": stubs, "process_wall_s": round(wall, 1), "exit_code": rc}


def root_cause(tail: collections.deque) -> str | None:
    """The last ``...Error: message`` line of a peer's output (vLLM's engine core logs the
    real exception there; the client only sees EngineDeadError)."""
    found = re.findall(r"([\w.]*(?:Error|Exception): .*)", "\n".join(tail))
    found = [f for f in found if "EngineDeadError" not in f] or found
    return found[-1][:600] if found else None


def stream(cmd: list[str], env: dict, tail: collections.deque, timeout: float) -> int:
    """Run ``cmd`` in its own process group; its output goes to our stderr and its last
    lines into ``tail``. Past ``timeout`` seconds the whole group (vLLM's engine processes
    included) is killed."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )

    def kill() -> None:
        tail.append(f"peers.py: killed after {timeout:.0f} s")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip()[:400])
        return proc.wait()
    finally:
        timer.cancel()


def child_args(args: argparse.Namespace) -> list[str]:
    out = ["--workdir", str(args.workdir), "--n", str(args.n), "--size", args.size]
    out += ["--dtype", args.dtype, "--max-model-len", str(args.max_model_len)]
    for name in ("max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization"):
        if getattr(args, name) is not None:
            out += ["--" + name.replace("_", "-"), str(getattr(args, name))]
    out += ["--keep-vllm-caches"] if args.keep_vllm_caches else []
    return out + (["--enforce-eager"] if args.enforce_eager else [])


def summarize(raw: dict, peer: str, audio_s: float, expected: int) -> dict:
    out: dict[str, Any] = {"scope": SCOPES[peer]}
    if "seconds" in raw:
        out |= {"seconds": round(raw["seconds"], 2), "rtfx": round(audio_s / raw["seconds"], 1)}
    for key in ("encode_s", "generate_s", "load_s", "export_s"):
        if key in raw:
            out[key] = round(raw[key], 2)
    if "generated_tokens" in raw:
        out["generated_tokens"] = raw["generated_tokens"]
        out["fixed_work_ok"] = raw["generated_tokens"] == expected
    keep = ("texts", "version", "export_dir", "fbank", "stubs", "process_wall_s", "exit_code")
    out |= {k: raw[k] for k in keep if k in raw}
    if "error" in raw:
        out["error"] = raw["error"]
    return out


def versions() -> dict:
    found = throughput._versions()
    for dist in ("funasr", "transformers", "torchaudio", "kaldi-native-fbank"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def parent(args: argparse.Namespace) -> int:
    model, _, durations = workload(args)
    audio_s = sum(durations)
    expected = sum(token_counts(durations))
    peers = {}
    for peer in args.peers.split(","):
        print(f"== peer {peer}", file=sys.stderr, flush=True)
        peers[peer] = summarize(spawn(args, peer, model), peer, audio_s, expected)
    result = {
        "command": " ".join(sys.argv),
        "versions": versions(),
        "start_env": {k: os.environ.get(k, v) for k, v in START_ENV.items()},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"tokens_per_second": TOKENS_PER_SECOND, "warmup_files": WARMUP},
        "workload": {
            "model_dir": str(model),
            "utterances": args.n,
            "audio_seconds": round(audio_s, 1),
            "mean_seconds": round(audio_s / args.n, 2),
            "generated_tokens": expected,
        },
        "peers": peers,
    }
    text = json.dumps(result, indent=2, ensure_ascii=False)
    args.out.write_text(text)
    print(text)
    return 0


def add_workload_args(ap: argparse.ArgumentParser) -> None:
    """The workload and vLLM options every path's child gets (see :func:`child_args`)."""
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", choices=("tiny", "full"), default="full")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--max-num-seqs", type=int, default=None)
    ap.add_argument("--max-num-batched-tokens", type=int, default=None)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None)
    ap.add_argument("--enforce-eager", action="store_true", help="CPU smoke runs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_workload_args(ap)
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated: funasr,native")
    ap.add_argument("--torchaudio-shim", action="store_true", help="fbank without torchaudio")
    ap.add_argument(
        "--keep-vllm-caches",
        action="store_true",
        help="leave prefix caching / the multimodal processor cache at vLLM's defaults",
    )
    ap.add_argument("--peer-timeout", type=float, default=3600.0, help="seconds per peer")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--peer", choices=PEERS, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer:
        return child(args)
    if args.out is None:
        ap.error("--out is required")
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
