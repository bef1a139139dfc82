"""asrctl.testing's fake engine: the vLLM interface asrctl uses, deterministic, no vLLM."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

import pytest
import torch

from asrctl import testing
from asrctl.engine import Decoding, Engine, EngineOptions, start_vllm
from asrctl.errors import EngineError
from asrctl.testing import RequestOutputKind, SamplingParams, fake_engine

MAX_LEN = 64


def _prompt(seed: int, positions: int = 20, hidden: int = 128) -> torch.Tensor:
    return torch.randn(positions, hidden, generator=torch.Generator().manual_seed(seed))


def _kwargs(llm_dir: Path, **extra) -> dict:
    return {"model": str(llm_dir), "max_model_len": MAX_LEN} | extra


def _greedy(**fields) -> SamplingParams:
    return SamplingParams(temperature=0.0, **fields)


def _run(engine, prompts: dict[str, torch.Tensor], params: SamplingParams) -> dict:
    """Every request to the end; returns each one's last output."""
    for rid, prompt in prompts.items():
        engine.add_request(rid, {"prompt_embeds": prompt}, params)
    last = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            last[out.request_id] = out
    return last


@pytest.fixture
def sync(fun_asr_llm_dir):
    return fake_engine(_kwargs(fun_asr_llm_dir), asynchronous=False, spec="1")


def _tokenizer(llm_dir: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(llm_dir / "tokenizer.json"))


def test_same_prompt_same_words_different_prompt_other_words(sync, fun_asr_llm_dir):
    prompts = {"a": _prompt(0), "again": _prompt(0), "b": _prompt(1), "c": _prompt(2)}
    prompts["a_noisy"] = prompts["a"] + 1e-6 * torch.randn(prompts["a"].shape)
    prompts["short"] = prompts["a"][:-1]
    out = {k: o.outputs[0] for k, o in _run(sync, prompts, _greedy(max_tokens=32)).items()}
    assert out["a"].token_ids == out["again"].token_ids == out["a_noisy"].token_ids
    assert len({tuple(out[k].token_ids) for k in ("a", "b", "c", "short")}) == 4
    eos = testing._eos_id(fun_asr_llm_dir, {}, _tokenizer(fun_asr_llm_dir))
    for o in out.values():
        assert o.finish_reason == "stop" and o.token_ids[-1] == eos
        words = o.text.split()
        assert testing.MIN_WORDS <= len(words) <= testing.MAX_WORDS
        assert set(words) <= set(testing.WORDS)
        assert o.text == _tokenizer(fun_asr_llm_dir).decode(o.token_ids)
        assert o.cumulative_logprob is None  # no logprobs asked for


def test_limits_cut_with_finish_reason_length(sync):
    prompt = _prompt(3)
    full = _run(sync, {"full": prompt}, _greedy(max_tokens=32))["full"].outputs[0]
    cut = _run(sync, {"cut": prompt}, _greedy(max_tokens=2))["cut"].outputs[0]
    assert cut.finish_reason == "length" and cut.token_ids == full.token_ids[:2]
    endless = _run(sync, {"e": prompt}, _greedy(max_tokens=30, ignore_eos=True))["e"].outputs[0]
    assert len(endless.token_ids) == 30 and endless.finish_reason == "length"
    assert endless.token_ids[: len(full.token_ids) - 1] == full.token_ids[:-1]  # no EOS
    # the room left in max_model_len caps max_tokens, as in vLLM
    near = _run(sync, {"n": _prompt(3, positions=MAX_LEN - 1)}, _greedy(max_tokens=32))["n"]
    assert len(near.outputs[0].token_ids) == 1
    with pytest.raises(ValueError, match="longer than the maximum model length of 64"):
        sync.add_request("long", {"prompt_embeds": _prompt(3, positions=MAX_LEN + 1)}, _greedy())
    with pytest.raises(ValueError, match="hidden size 16"):
        sync.add_request("narrow", {"prompt_embeds": _prompt(3, hidden=16)}, _greedy())


def test_sampling_follows_the_seed(sync):
    prompt = {"p": _prompt(4)}

    def tokens(**fields):
        return _run(sync, prompt, SamplingParams(max_tokens=32, **fields))["p"].outputs[0].token_ids

    assert tokens(temperature=1.0, seed=7) == tokens(temperature=1.0, seed=7)
    sampled = {tuple(tokens(temperature=1.0, seed=s)) for s in range(6)}
    assert len(sampled) > 3 and tuple(tokens(temperature=0.0, seed=7)) not in sampled


def test_output_kinds_and_detokenize(sync):
    prompt = {"p": _prompt(5)}
    final = _greedy(max_tokens=32, output_kind=RequestOutputKind.FINAL_ONLY, detokenize=False)
    sync.add_request("f", {"prompt_embeds": prompt["p"]}, final)
    sync.add_request("c", {"prompt_embeds": prompt["p"]}, _greedy(max_tokens=32))
    sync.add_request(
        "d", {"prompt_embeds": prompt["p"]}, _greedy(max_tokens=32, output_kind="DELTA")
    )
    seen: dict[str, list] = {"f": [], "c": [], "d": []}
    while sync.has_unfinished_requests():
        for out in sync.step():
            seen[out.request_id].append(out)
    (only,) = seen["f"]
    assert only.finished and only.outputs[0].text == ""  # vLLM leaves text empty too
    cumulative = seen["c"]
    assert [o.finished for o in cumulative] == [False] * (len(cumulative) - 1) + [True]
    assert [len(o.outputs[0].token_ids) for o in cumulative] == list(range(1, len(cumulative) + 1))
    assert cumulative[-1].outputs[0].token_ids == only.outputs[0].token_ids
    deltas = [t for o in seen["d"] for t in o.outputs[0].token_ids]
    assert deltas == only.outputs[0].token_ids
    assert [r[0] for r in sync.requests] == ["f", "c", "d"]


def test_start_vllm_returns_the_fake_and_its_limits(fun_asr_llm_dir, monkeypatch):
    monkeypatch.setenv("ASRCTL_FAKE_ENGINE", "1")
    engine = start_vllm(fun_asr_llm_dir, "float32", EngineOptions(), asynchronous=False)
    assert isinstance(engine, testing.FakeLLMEngine)
    config_len = engine.model_config.max_model_len  # from config.json
    assert config_len > 0
    options = EngineOptions(max_model_len=100)
    engine = start_vllm(fun_asr_llm_dir, "float32", options, asynchronous=True)
    assert isinstance(engine, testing.FakeAsyncLLM) and engine.model_config.max_model_len == 100
    monkeypatch.setenv("ASRCTL_FAKE_ENGINE", "fail=start")
    with pytest.raises(EngineError, match="failed to start"):
        start_vllm(fun_asr_llm_dir, "float32", options, asynchronous=False)
    monkeypatch.setenv("ASRCTL_FAKE_ENGINE", "delay=0.1,bogus")
    with pytest.raises(EngineError, match="bogus"):
        start_vllm(fun_asr_llm_dir, "float32", options, asynchronous=False)


def test_asrctl_engine_runs_on_the_fake_without_vllm(fake_engine, fun_asr_llm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # any import of vllm now fails
    with Engine(fun_asr_llm_dir, EngineOptions(max_model_len=MAX_LEN)) as engine:
        prompts = [_prompt(6), _prompt(7), _prompt(6)]
        got = engine.generate(prompts, [Decoding(max_tokens=32)] * 2 + [Decoding(max_tokens=2)])
        assert got[0].text and got[0].finish_reason == "stop" and got[1].text != got[0].text
        assert got[2].token_ids == got[0].token_ids[:2] and got[2].finish_reason == "length"
        assert got[0].text == engine.embed_text.tokenizer.decode(list(got[0].token_ids))
        fake = engine.engine
    assert fake.shut_down  # Engine.close stopped its "engine core"


def test_asrctl_async_engine_runs_on_the_fake_without_vllm(
    fake_engine, fun_asr_llm_dir, monkeypatch
):
    from asrctl.engine import AsyncEngine

    monkeypatch.setitem(sys.modules, "vllm", None)

    async def scenario():
        engine = AsyncEngine(fun_asr_llm_dir, EngineOptions(max_model_len=MAX_LEN))
        try:
            gens = [g async for g in engine.generate(_prompt(6), Decoding(max_tokens=32))]
            await engine.check_health()
        finally:
            engine.close()
        return gens

    *partial, last = asyncio.run(scenario())
    assert partial and not any(g.finished for g in partial)
    assert last.finished and last.finish_reason == "stop" and last.text
    assert all(last.text.startswith(g.text) for g in partial)


def test_loop_mode_never_stops(fun_asr_llm_dir):
    looping = fake_engine(_kwargs(fun_asr_llm_dir), asynchronous=False, spec="loop")
    out = _run(looping, {"p": _prompt(8)}, _greedy(max_tokens=40))["p"].outputs[0]
    assert len(out.token_ids) == 40 and out.finish_reason == "length"
    words = out.text.split()
    assert len(words) > 2 * testing.MAX_WORDS  # the sentence, over and over


def test_async_generate_streams_then_finishes(fun_asr_llm_dir):
    async def scenario():
        engine = fake_engine(_kwargs(fun_asr_llm_dir), asynchronous=True, spec="1")
        params = _greedy(max_tokens=32, logprobs=0)
        outs = [o async for o in engine.generate({"prompt_embeds": _prompt(9)}, params, "r1")]
        # a consumer that goes away mid-way aborts its request
        stream = engine.generate({"prompt_embeds": _prompt(9)}, params, "r2")
        async with contextlib.aclosing(stream):
            await anext(stream)
        await engine.check_health()
        engine.shutdown()
        with pytest.raises(RuntimeError):
            await engine.check_health()
        return outs, engine.aborted

    outs, aborted = asyncio.run(scenario())
    *partial, last = outs
    assert partial and not any(o.finished for o in partial) and last.finished
    texts = [o.outputs[0].text for o in outs]
    assert all(last.outputs[0].text.startswith(t) for t in texts)
    assert last.outputs[0].finish_reason == "stop" and partial[0].outputs[0].finish_reason is None
    assert last.outputs[0].cumulative_logprob < 0
    assert aborted == ["r2"]


def test_a_dying_engine_fails_requests_and_health(fun_asr_llm_dir):
    async def scenario():
        engine = fake_engine(_kwargs(fun_asr_llm_dir), asynchronous=True, spec="fail=step")
        await engine.check_health()
        with pytest.raises(RuntimeError, match="died"):
            async for _ in engine.generate({"prompt_embeds": _prompt(10)}, _greedy(), "r"):
                pass
        with pytest.raises(RuntimeError, match="dead"):
            await engine.check_health()

    asyncio.run(scenario())
