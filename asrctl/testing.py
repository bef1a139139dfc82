"""A deterministic stand-in for vLLM's engines, so the pipeline can be tested without vLLM.

With ``$ASRCTL_FAKE_ENGINE`` set (any non-empty value), :func:`asrctl.engine.start_vllm`
returns :func:`fake_engine`'s object instead of vLLM's ``LLMEngine`` (batch transcription)
or ``AsyncLLM`` (``asrctl serve``), and :func:`asrctl.engine.sampling_params` builds this
module's :class:`SamplingParams` and :class:`RequestOutputKind` instead of vLLM's: nothing
imports vLLM, and an engine "starts" in milliseconds. Like simonw/llm's ``MockModel``, it
only mimics the interface (the boundary asrctl.engine talks to).

What it "generates" is a short sentence of English words from :data:`WORDS`, chosen by a
hash of the prompt embeddings (so the same audio gives the same text and different audio,
almost surely, a different one), tokenized with the exported LLM folder's
``tokenizer.json`` and ended with its EOS id. It honours ``max_tokens`` (cut: finish reason
``length``), ``ignore_eos`` (the sentence repeats up to ``max_tokens``), ``temperature`` and
``seed`` (sampling mixes the seed into the hash; no seed: random), ``logprobs`` (a negative
``cumulative_logprob``), ``detokenize``, ``output_kind`` and the room left in
``max_model_len``; a prompt longer than ``max_model_len`` is refused as vLLM refuses it
(``ValueError``). Penalties, ``top_p`` and ``top_k`` are accepted and ignored.

The value of ``$ASRCTL_FAKE_ENGINE`` may carry comma-separated options:

- ``delay=S``: sleep S seconds per engine step (a slow engine; kill/resume tests);
- ``fail=start``: the engine fails to start (:class:`~asrctl.errors.EngineError`);
- ``fail=step``: the engine dies at its first step (every request fails, and the async
  engine's ``check_health`` raises from then on);
- ``loop``: every output repeats its sentence up to ``max_tokens`` and never stops (what a
  random-weight model does; asrctl's repetition guard must cut it).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from asrctl.errors import EngineError

if TYPE_CHECKING:
    import torch

# What the fake "says": common words every Qwen-style tokenizer (the fixtures' included)
# encodes; ASCII, so a cut never leaves half a character.
WORDS = (
    "hello world speech recognition model language meeting podcast the of and to in is "
    "that it was for on are as with they at be this have from one word not what all were "
    "we when your can said there use each which she do how their if will up other about"
).split()
MIN_WORDS, MAX_WORDS = 2, 6
N_PROJECTIONS = 2  # random projections of each prompt position that its hash is taken over
BIN = 0.02  # their quantisation step, in standard deviations (see prompt_key)
DEFAULT_MAX_TOKENS = 16  # vLLM's SamplingParams default


class RequestOutputKind(enum.Enum):
    """vLLM's ``RequestOutputKind``: what each output of a request carries."""

    CUMULATIVE = 0  # everything generated so far
    DELTA = 1  # only the new tokens
    FINAL_ONLY = 2  # one output, when the request finishes


@dataclass(frozen=True)
class SamplingParams:
    """The fields of ``vllm.SamplingParams`` that asrctl sets, with vLLM's defaults."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logprobs: int | None = None
    detokenize: bool = True
    skip_clone: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE


@dataclass(frozen=True)
class CompletionOutput:
    """One sequence of a request (vLLM's ``CompletionOutput``)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: None
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass(frozen=True)
class RequestOutput:
    """What a step returns for one request (vLLM's ``RequestOutput``)."""

    request_id: str
    outputs: list[CompletionOutput]
    finished: bool
    prompt: str | None = None
    prompt_token_ids: list[int] | None = None


@dataclass(frozen=True)
class Behaviour:
    """The options of ``$ASRCTL_FAKE_ENGINE`` (see the module docstring)."""

    delay_s: float = 0.0
    fail: str | None = None  # "start" or "step"
    loop: bool = False  # never emit EOS: repeat the sentence up to max_tokens

    @classmethod
    def parse(cls, spec: str) -> Behaviour:
        out = cls()
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, value = part.partition("=")
            if name == "delay":
                out = replace(out, delay_s=float(value))
            elif name == "fail" and value in ("start", "step"):
                out = replace(out, fail=value)
            elif name == "loop" and not value:
                out = replace(out, loop=True)
            elif not value and name in ("1", "true", "yes", "on"):
                continue
            else:
                raise EngineError(
                    f"unknown ASRCTL_FAKE_ENGINE option {part!r}",
                    hint="use 1, delay=SECONDS, fail=start, fail=step or loop (comma-separated)",
                )
        return out


class EngineDeadError(RuntimeError):
    """Named as vLLM's (``vllm.v1.engine.exceptions``): asrctl tells a dead engine by it."""


@dataclass
class _Request:
    request_id: str
    tokens: list[int]  # everything it will generate
    finish_reason: str
    params: Any
    logprob: float | None  # per token, when logprobs were asked for
    done: int = 0  # tokens generated so far


@dataclass
class FakeCore:
    """The model's vocabulary, limits and per-request arithmetic; the engines share it."""

    llm_dir: Path
    model_config: SimpleNamespace  # max_model_len, model (vLLM's ModelConfig, in short)
    hidden_size: int | None
    eos_id: int
    tokenizer: Any
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[tuple[str, int, Any]] = field(default_factory=list)  # (id, positions, params)
    dead: bool = False

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], behaviour: Behaviour) -> FakeCore:
        from tokenizers import Tokenizer

        llm_dir = Path(kwargs["model"])
        config = json.loads((llm_dir / "config.json").read_text())
        max_len = kwargs.get("max_model_len") or config.get("max_position_embeddings") or 2048
        tokenizer = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
        return cls(
            llm_dir=llm_dir,
            model_config=SimpleNamespace(max_model_len=int(max_len), model=str(llm_dir)),
            hidden_size=config.get("hidden_size"),
            eos_id=_eos_id(llm_dir, config, tokenizer),
            tokenizer=tokenizer,
            behaviour=behaviour,
        )

    @property
    def max_model_len(self) -> int:
        return int(self.model_config.max_model_len)

    def new_request(self, request_id: str, prompt: Mapping[str, Any], params: Any) -> _Request:
        """Check ``prompt`` as vLLM does and decide everything the request will generate."""
        if self.dead:
            raise RuntimeError("the fake engine is dead")
        embeds = prompt.get("prompt_embeds")
        if embeds is None or getattr(embeds, "ndim", 0) != 2:
            raise ValueError("the fake engine takes {'prompt_embeds': (seq, hidden) tensor}")
        positions, hidden = embeds.shape
        if self.hidden_size is not None and hidden != self.hidden_size:
            raise ValueError(
                f"prompt_embeds has hidden size {hidden}, the model {self.hidden_size}"
            )
        if positions > self.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {positions}) is longer than the maximum model "
                f"length of {self.max_model_len}."
            )
        self.requests.append((request_id, positions, params))
        key = prompt_key(embeds)
        temperature = float(_param(params, "temperature", 1.0))
        if temperature > 0:  # sampling: the seed (or chance) picks the words
            seed = _param(params, "seed", None)
            key += f"|t={temperature}|s={seed if seed is not None else random.random()}"
        room = max(1, self.max_model_len - positions)  # vLLM stops at max_model_len
        limit = _param(params, "max_tokens", None)  # None: up to max_model_len
        limit = room if limit is None else min(int(limit), room)
        endless = self.behaviour.loop or bool(_param(params, "ignore_eos", False))
        tokens, reason = self.tokens_for(key, limit, endless)
        logprob = None
        if _param(params, "logprobs", None) is not None:
            logprob = -0.05 - (int(hashlib.sha256(key.encode()).hexdigest()[:4], 16) % 50) / 100
        return _Request(request_id, tokens, reason, params, logprob)

    def tokens_for(self, key: str, limit: int, endless: bool) -> tuple[list[int], str]:
        """The ids a prompt hashed to ``key`` generates, and the finish reason; ``endless``
        (``ignore_eos``): the sentence repeated, exactly ``limit`` ids."""
        rng = random.Random(hashlib.sha256(key.encode()).digest())
        words = rng.choices(WORDS, k=rng.randint(MIN_WORDS, MAX_WORDS))
        sentence = self.tokenizer.encode(" ".join(words), add_special_tokens=False).ids
        if endless:
            repeated = (sentence * (limit // max(1, len(sentence)) + 1))[:limit]
            return repeated, "length"
        full = [*sentence, self.eos_id]
        if len(full) > limit:
            return full[:limit], "length"
        return full, "stop"

    def output(self, req: _Request, since: int = 0) -> RequestOutput:
        """The request's output after ``req.done`` tokens (from ``since``, for DELTA)."""
        ids = req.tokens[since : req.done]
        finished = req.done >= len(req.tokens)
        text = ""
        if _param(req.params, "detokenize", True):
            skip = bool(_param(req.params, "skip_special_tokens", True))
            text = self.tokenizer.decode(ids, skip_special_tokens=skip)
        completion = CompletionOutput(
            index=0,
            text=text,
            token_ids=list(ids),
            cumulative_logprob=None if req.logprob is None else req.logprob * req.done,
            logprobs=None,
            finish_reason=req.finish_reason if finished else None,
            stop_reason=None,
        )
        return RequestOutput(req.request_id, [completion], finished)

    def check_alive(self) -> None:
        if self.behaviour.fail == "step":
            self.dead = True
            raise EngineDeadError("the fake engine died (ASRCTL_FAKE_ENGINE fail=step)")


class FakeLLMEngine:
    """Stands in for ``vllm.LLMEngine``: ``add_request``, ``step`` (one token per unfinished
    request), ``has_unfinished_requests``, ``model_config``, ``engine_core.shutdown``."""

    def __init__(self, core: FakeCore) -> None:
        self.core = core
        self._running: dict[str, _Request] = {}
        self.engine_core = SimpleNamespace(shutdown=self._shutdown)
        self.shut_down = False

    @property
    def model_config(self) -> SimpleNamespace:
        return self.core.model_config

    @property
    def requests(self) -> list[tuple[str, int, Any]]:
        """Every request added so far: (request id, prompt positions, sampling params)."""
        return self.core.requests

    def add_request(self, request_id: str, prompt: Mapping[str, Any], params: Any) -> None:
        if request_id in self._running:
            raise ValueError(f"request id {request_id!r} is already running")
        self._running[request_id] = self.core.new_request(request_id, prompt, params)

    def has_unfinished_requests(self) -> bool:
        return bool(self._running)

    def step(self) -> list[RequestOutput]:
        self.core.check_alive()
        if self.core.behaviour.delay_s:
            time.sleep(self.core.behaviour.delay_s)
        outputs = []
        for rid, req in list(self._running.items()):
            before = req.done
            req.done += 1
            out = self.core.output(req)
            if out.finished:
                del self._running[rid]
            kind = _output_kind(req.params)
            if kind == "DELTA":
                outputs.append(self.core.output(req, since=before))
            elif out.finished or kind != "FINAL_ONLY":
                outputs.append(out)
        return outputs

    def abort_request(self, request_ids: list[str] | str) -> None:
        for rid in [request_ids] if isinstance(request_ids, str) else request_ids:
            self._running.pop(rid, None)

    def _shutdown(self) -> None:
        self.shut_down = True
        self._running.clear()


class FakeAsyncLLM:
    """Stands in for ``vllm.AsyncLLM``: ``generate`` (an async generator of outputs, one
    token per step, the last one finished), ``check_health``, ``shutdown``, ``model_config``.
    ``aborted`` lists the requests whose consumer closed the generator early."""

    def __init__(self, core: FakeCore) -> None:
        self.core = core
        self.aborted: list[str] = []
        self.shut_down = False

    @property
    def model_config(self) -> SimpleNamespace:
        return self.core.model_config

    @property
    def requests(self) -> list[tuple[str, int, Any]]:
        """Every request generated so far: (request id, prompt positions, sampling params)."""
        return self.core.requests

    async def generate(
        self, prompt: Mapping[str, Any], sampling_params: Any, request_id: str, **_: Any
    ) -> AsyncIterator[RequestOutput]:
        if self.shut_down:
            raise RuntimeError("the fake engine was shut down")
        req = self.core.new_request(request_id, prompt, sampling_params)
        kind = _output_kind(sampling_params)
        finished = False
        try:
            while not finished:
                await asyncio.sleep(self.core.behaviour.delay_s)
                self.core.check_alive()
                before = req.done
                req.done += 1
                out = self.core.output(req)
                finished = out.finished
                if kind == "DELTA":
                    yield self.core.output(req, since=before)
                elif finished or kind != "FINAL_ONLY":
                    yield out
        finally:
            if not finished:
                self.aborted.append(request_id)

    async def check_health(self) -> None:
        if self.core.dead or self.shut_down:
            raise RuntimeError("the fake engine is dead")

    def shutdown(self) -> None:
        self.shut_down = True


def fake_engine(
    kwargs: Mapping[str, Any], *, asynchronous: bool, spec: str | None = None
) -> FakeLLMEngine | FakeAsyncLLM:
    """The stand-in for the engine vLLM would start with ``EngineArgs(**kwargs)``.

    ``spec`` defaults to ``$ASRCTL_FAKE_ENGINE`` (see the module docstring).
    """
    import os

    from asrctl.engine import FAKE_ENGINE_ENV

    behaviour = Behaviour.parse(os.environ.get(FAKE_ENGINE_ENV, "") if spec is None else spec)
    if behaviour.fail == "start":
        raise EngineError(
            f"vLLM failed to start on {kwargs['model']}: fake failure (ASRCTL_FAKE_ENGINE)"
        )
    core = FakeCore.from_kwargs(kwargs, behaviour)
    return FakeAsyncLLM(core) if asynchronous else FakeLLMEngine(core)


def prompt_key(embeds: torch.Tensor) -> str:
    """A hash of a ``(seq, hidden)`` prompt that float32 noise does not change.

    Each position is reduced to :data:`N_PROJECTIONS` projections of its unit vector on
    fixed random directions (each about N(0, 1)), quantised in steps of :data:`BIN`. Noise
    of 1e-6 relative (an encoder batch padded differently: 3e-7 on the tiny fixtures)
    crosses a step with probability about 1e-4 per projection; audio rows of different
    audio differ by several percent (8 % on the tiny fixtures), so they land in other
    steps and the prompts hash apart. Text rows are identical bit for bit. Not robust to
    bfloat16-sized differences (an encoder run in bf16 across batch compositions).
    """
    import torch

    x = embeds.detach().to("cpu", torch.float64)
    positions, hidden = x.shape
    gen = torch.Generator().manual_seed(hidden)
    directions = torch.randn(hidden, N_PROJECTIONS, generator=gen, dtype=torch.float64)
    rows = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    bins = torch.floor((rows @ directions) / BIN).to(torch.int64)
    return f"{positions}:{hashlib.sha256(bins.numpy().tobytes()).hexdigest()}"


def _param(params: Any, name: str, default: Any) -> Any:
    """A sampling parameter of a ``vllm.SamplingParams`` or :class:`SamplingParams`."""
    value = getattr(params, name, default)
    return default if value is None and default is not None else value


def _output_kind(params: Any) -> str:
    kind = getattr(params, "output_kind", "CUMULATIVE")
    return str(getattr(kind, "name", kind)).upper()


def _eos_id(llm_dir: Path, config: Mapping[str, Any], tokenizer: Any) -> int:
    """The EOS id generation stops at: generation_config.json's, config.json's, or the
    tokenizer's ``<|im_end|>`` / ``<|endoftext|>``."""
    sources = [config]
    gen_config = llm_dir / "generation_config.json"
    if gen_config.exists():
        sources.insert(0, json.loads(gen_config.read_text()))
    for source in sources:
        eos = source.get("eos_token_id")
        if isinstance(eos, list) and eos:
            return int(eos[0])
        if isinstance(eos, int):
            return eos
    for token in ("<|im_end|>", "<|endoftext|>", "</s>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    raise EngineError(f"the fake engine found no EOS token in {llm_dir}")
