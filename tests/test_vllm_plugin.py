"""asrctl as a vLLM plugin: ``asrctl setup`` writes ``DIR/.asrctl/vllm``; vLLM itself runs
it (seed 000's ``LLM(model=...)`` and ``AsyncLLM`` code, ``vllm serve``) with greedy tokens
equal to asrctl's own pipeline, for every family.

vLLM finds the plugin through the ``vllm.general_plugins`` entry point, in every process
it starts. The asrctl under test is this checkout, whose entry point is not installed
(the editable install may point elsewhere), so the vLLM processes get one from a
stand-in distribution on ``PYTHONPATH`` (:func:`plugin_env`), just as an installed asrctl
provides it. One engine per use: the seed snippet runs as a user runs it (``python
examples/vllm_plugin.py``, a subprocess); asrctl's pipeline runs here.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from speechlike import noise

from asrctl.fixtures import make_fixture

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "vllm_plugin.py"
MAX_TOKENS = 10
ENGINE_ARGS = ("--dtype", "float32", "--enforce-eager", "--max-model-len", "1024")
FAMILIES = {  # family -> (fixture generator, sample rate of its clips)
    "fun-asr-nano": ("fun-asr-nano", 16000),
    "fireredasr-llm": ("fireredasr-llm", 16000),
    "glm-asr-nano": ("glm-asr-nano", 16000),
    "vibevoice-asr": ("vibevoice-asr", 24000),
    "vibevoice-asr-hf": ("vibevoice-asr-hf", 24000),  # transformers' layout (seed snippet only)
}


# -- setup and registration (no engine) ----------------------------------------------------


def _setup(model_dir: Path) -> Path:
    """``asrctl setup DIR`` as a user runs it; returns the vllm_dir it prints."""
    out = subprocess.run(
        [sys.executable, "-m", "asrctl", "setup", str(model_dir)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    fields = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    return Path(fields["vllm_dir"])


@pytest.fixture(scope="module")
def fun_asr_vllm_dir(fun_asr_tiny: Path) -> Path:
    return _setup(fun_asr_tiny)


def test_setup_writes_a_vllm_folder_beside_the_export(fun_asr_tiny, fun_asr_vllm_dir):
    from asrctl.vllm_plugin import ARCH

    assert fun_asr_vllm_dir == fun_asr_tiny / ".asrctl" / "vllm"
    config = json.loads((fun_asr_vllm_dir / "config.json").read_text())
    llm = json.loads((fun_asr_tiny / ".asrctl" / "llm" / "config.json").read_text())
    assert config["architectures"] == [ARCH]
    section = config["asrctl"]
    assert section["family"] == "fun-asr-nano"
    assert section["model_dir"] == str(fun_asr_tiny)
    assert section["text_architectures"] == llm["architectures"]
    assert {k: v for k, v in config.items() if k not in ("architectures", "asrctl")} == {
        k: v for k, v in llm.items() if k != "architectures"
    }
    weights = fun_asr_vllm_dir / "model.safetensors"
    assert weights.is_symlink() and weights.resolve() == (
        fun_asr_tiny / ".asrctl" / "llm" / "model.safetensors"
    )


def test_the_placeholder_is_one_new_special_token(fun_asr_vllm_dir):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from asrctl.vllm_plugin.family import AUDIO_TOKEN

    section = json.loads((fun_asr_vllm_dir / "config.json").read_text())["asrctl"]
    original = Tokenizer.from_file(str(fun_asr_vllm_dir.parent / "llm" / "tokenizer.json"))
    assert original.token_to_id(AUDIO_TOKEN) is None
    hf = AutoTokenizer.from_pretrained(fun_asr_vllm_dir)
    text = f"语音转写：{AUDIO_TOKEN}<|im_end|>"
    ids = hf.encode(text, add_special_tokens=False)
    assert ids.count(section["audio_token_id"]) == 1
    assert section["audio_token_id"] not in original.encode("语音转写：<|im_end|>").ids


def test_setup_is_idempotent_and_leaves_the_model_folder_alone(fun_asr_copy):
    before = sorted(p.name for p in fun_asr_copy.iterdir())
    first = _setup(fun_asr_copy)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert _setup(fun_asr_copy) == first
    assert (first / "config.json").stat().st_mtime_ns == stamp  # not rewritten
    assert sorted(p.name for p in fun_asr_copy.iterdir() if p.name != ".asrctl") == before
    assert not list(first.parent.glob("vllm.tmp-*"))


def test_a_killed_setups_temporary_folder_is_removed(fun_asr_copy):
    cache = _setup(fun_asr_copy).parent
    old, fresh = cache / "vllm.tmp-killed", cache / "vllm.tmp-writing"
    for d in (old, fresh):
        d.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    _setup(fun_asr_copy)
    assert not old.exists() and fresh.exists()  # a write in progress is left alone


def test_register_never_raises(monkeypatch, caplog):
    import asrctl.vllm_plugin as plugin

    monkeypatch.setitem(sys.modules, "vllm", None)  # vLLM not importable
    with caplog.at_level(logging.WARNING, logger="asrctl"):
        plugin.register()
    assert "not registered" in caplog.text


def test_importing_the_plugin_is_cheap():
    """vLLM imports it in every process: no torch, no vLLM, no transformers until used."""
    code = (
        "import sys, asrctl.vllm_plugin, asrctl.vllm_plugin.setup; "
        "print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"


def test_register_names_the_class_once():
    from vllm import ModelRegistry

    from asrctl.vllm_plugin import ARCH, register

    register()
    register()
    assert ARCH in ModelRegistry.get_supported_archs()


def test_the_entry_point_is_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points."vllm.general_plugins"]' in text
    assert 'asrctl = "asrctl.vllm_plugin:register"' in text


# -- the multimodal processor (vLLM's config and processor, no engine) ----------------------


@pytest.fixture(scope="module")
def processor(fun_asr_vllm_dir):
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY

    from asrctl.vllm_plugin import register

    register()
    config = ModelConfig(model=str(fun_asr_vllm_dir), max_model_len=1024, dtype="float32")
    return MULTIMODAL_REGISTRY.create_processor(config)


def _apply(processor, prompt, audio):
    from vllm.multimodal.processing import ProcessorInputs, TimingContext

    items = processor.info.parse_mm_data({"audio": audio})
    inputs = ProcessorInputs(prompt=prompt, mm_data_items=items)
    return processor.apply(inputs, TimingContext(enabled=False))


def _family_ids(model_dir: Path, vllm_dir: Path, options) -> tuple[list, list]:
    from tokenizers import Tokenizer

    from asrctl.adapters.registry import load_adapter

    tok = Tokenizer.from_file(str(vllm_dir / "tokenizer.json"))
    prompt = load_adapter(model_dir).prompt(options)
    return (
        tok.encode(prompt.prefix, add_special_tokens=False).ids,
        tok.encode(prompt.suffix, add_special_tokens=False).ids,
    )


def test_an_empty_prompt_gets_the_familys_own(processor, fun_asr_tiny, fun_asr_vllm_dir):
    from asrctl.adapters.base import PromptOptions
    from asrctl.adapters.registry import load_adapter

    audio = noise(1.5, seed=3)
    n = load_adapter(fun_asr_tiny).audio_positions(len(audio))
    audio_id = processor.info.plugin.audio_token_id
    prefix, suffix = _family_ids(fun_asr_tiny, fun_asr_vllm_dir, PromptOptions())
    for prompt in ([], ""):
        out = _apply(processor, prompt, audio)
        assert out["prompt_token_ids"] == [*prefix, *[audio_id] * n, *suffix]
        (where,) = out["mm_placeholders"]["audio"]
        assert (where.offset, where.length) == (len(prefix), n)


def test_text_without_the_placeholder_enters_the_familys_prompt(
    processor, fun_asr_tiny, fun_asr_vllm_dir
):
    """As asrctl's chat API: Fun-ASR-Nano takes a caller's text as hotwords."""
    from tokenizers import Tokenizer

    from asrctl.adapters.base import PromptOptions

    tok = Tokenizer.from_file(str(fun_asr_vllm_dir / "tokenizer.json"))
    audio = noise(1.0, seed=4)
    out = _apply(processor, tok.encode("阿里巴巴, 通义", add_special_tokens=False).ids, audio)
    options = PromptOptions(hotwords=("阿里巴巴", "通义"))
    prefix, suffix = _family_ids(fun_asr_tiny, fun_asr_vllm_dir, options)
    (where,) = out["mm_placeholders"]["audio"]
    ids = out["prompt_token_ids"]
    assert ids[: where.offset] == prefix and ids[where.offset + where.length :] == suffix
    assert prefix != _family_ids(fun_asr_tiny, fun_asr_vllm_dir, PromptOptions())[0]


def test_a_prompt_with_the_placeholder_is_used_as_written(processor, fun_asr_vllm_dir):
    from tokenizers import Tokenizer

    from asrctl.vllm_plugin.family import AUDIO_TOKEN

    tok = Tokenizer.from_file(str(fun_asr_vllm_dir / "tokenizer.json"))
    before, after = (tok.encode(t, add_special_tokens=False).ids for t in ("say ", " now"))
    ids = tok.encode(f"say {AUDIO_TOKEN} now", add_special_tokens=False).ids
    out = _apply(processor, ids, noise(0.8, seed=5))
    (where,) = out["mm_placeholders"]["audio"]
    assert out["prompt_token_ids"][: where.offset] == before
    assert out["prompt_token_ids"][where.offset + where.length :] == after


def test_every_audio_form_gives_asrctls_samples(processor, tmp_path):
    """A path, (samples, rate) at any rate, samples at the family's rate: resampled by
    asrctl's loader, so the model sees what asrctl's pipeline sees."""
    from asrctl.audio import load_audio

    low = noise(1.2, seed=6, sr=8000)
    path = tmp_path / "a.wav"
    sf.write(path, low, 8000, subtype="FLOAT")
    want = load_audio(str(path), sample_rate=16000)
    for form in (str(path), path, (low, 8000), want, (want, 16000)):
        (got,) = processor.info.parse_mm_data({"audio": form})["audio"].get_all()
        assert np.array_equal(np.asarray(got, dtype=np.float32), want), type(form)


def test_audio_longer_than_the_window_is_refused(processor):
    with pytest.raises(ValueError, match=r"audio of 31\.0 s is longer than Fun-ASR-Nano"):
        _apply(processor, [], noise(31.0, seed=7))


def test_profiling_uses_the_longest_audio_a_prompt_takes(processor):
    from asrctl.adapters.registry import load_adapter

    info = processor.info
    assert info.max_samples == 30 * 16000  # the family's window (fits 1,024 positions)
    (tokens,) = info.get_mm_max_tokens_per_item(1024, {"audio": 1}).values()
    adapter = load_adapter(info.plugin.model_dir)
    assert tokens == adapter.audio_positions(30 * 16000)


# -- vLLM runs it --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for vLLM processes: this checkout first, plus a stand-in distribution
    declaring asrctl's ``vllm.general_plugins`` entry point (as an installed asrctl does)."""
    from asrctl.vllm_plugin.setup import write_entry_point

    root = write_entry_point(tmp_path_factory.mktemp("entry-point"))
    env = dict(os.environ)
    paths = [str(root), str(REPO), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, plugin_env) -> dict:
    """A family's tiny checkpoint set up for vLLM, its clips, asrctl's own pipeline's
    greedy tokens for them (its engine closed again before vLLM starts on the plugin) and
    seed 000's code's output on them (``python examples/vllm_plugin.py``)."""
    name = request.param
    generator, rate = FAMILIES[name]
    root = tmp_path_factory.mktemp(name)
    model_dir = make_fixture(generator, root / "model")
    clips = []
    for i, seconds in enumerate((1.3, 2.2)):
        path = root / f"clip{i}.wav"
        sf.write(path, noise(seconds, seed=i + 1, sr=rate), rate, subtype="PCM_16")
        clips.append(path)
    if name == "fun-asr-nano":  # another rate: resampled the same way on both paths
        path = root / "clip8k.wav"
        sf.write(path, noise(1.7, seed=9, sr=8000), 8000, subtype="PCM_16")
        clips.append(path)
    vllm_dir = _setup(model_dir)
    tokens = _asrctl_tokens(model_dir, clips)
    return {
        "name": name,
        "model_dir": model_dir,
        "vllm_dir": vllm_dir,
        "clips": clips,
        "tokens": tokens,  # asrctl's pipeline's
        "plugin": _example(plugin_env, vllm_dir, clips),  # seed 000's code's
    }


def _asrctl_tokens(model_dir: Path, clips: list[Path]) -> list[list[int]]:
    from asrctl.engine import EngineOptions
    from asrctl.inputs import iter_inputs
    from asrctl.transcribe import TranscribeOptions, Transcriber

    options = EngineOptions(dtype="float32", enforce_eager=True, max_model_len=1024)
    # vLLM's default repetition penalty is 1.0 (FireRed's asrctl default is 3.0)
    decode = TranscribeOptions(max_tokens=MAX_TOKENS, repetition_penalty=1.0)
    items = iter_inputs([str(c) for c in clips])
    with Transcriber(model_dir, engine_options=options, device="cpu") as t:
        results = {r.key: r for batch in t.transcribe(items, decode) for r in batch}
    return [list(results[item.key].token_ids) for item in items]


def _example(env: dict[str, str], vllm_dir: Path, clips: list[Path], *extra: str) -> list:
    args = [*map(str, clips), *extra, "--max-tokens", str(MAX_TOKENS), *ENGINE_ARGS]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), str(vllm_dir), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.vllm
def test_seed_snippet_tokens_equal_asrctl_pipeline(family):
    """``LLM(model=vllm_dir)`` with ``{"prompt": "", "multi_modal_data": {"audio": path}}``:
    greedy tokens equal asrctl's pipeline on the same checkpoint and files."""
    assert [o["token_ids"] for o in family["plugin"]] == family["tokens"]
    assert len({tuple(t) for t in family["tokens"]}) > 1  # the audio matters


def readme_block() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Use with vLLM directly\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.vllm
def test_readme_block_runs(family, plugin_env, tmp_path):
    """The README's block as a user runs it (``python demo.py``), paths and CPU settings
    replaced: it prints what the example printed (once: GLM-ASR)."""
    if family["name"] != "glm-asr-nano":
        pytest.skip("once")
    code = readme_block()
    for old, new in (
        ('"/path/to/FireRedASR-LLM-L/.asrctl/vllm"', repr(str(family["vllm_dir"]))),
        ('"/path/to/audio.wav"', repr(str(family["clips"][0]))),
        ("max_model_len=2048,", 'max_model_len=1024, dtype="float32", enforce_eager=True,'),
        ("max_tokens=256", f"max_tokens={MAX_TOKENS}"),
    ):
        assert old in code
        code = code.replace(old, new)
    (tmp_path / "demo.py").write_text(code)
    proc = subprocess.run(
        [sys.executable, "demo.py"],
        capture_output=True,
        text=True,
        env=plugin_env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = [line for line in proc.stdout.splitlines() if line.startswith("Transcription: ")]
    assert [line.removeprefix("Transcription: ").strip() for line in printed] == _expected(family)[
        :1
    ]


@pytest.mark.vllm
def test_async_llm_equals_asrctl_pipeline(family, plugin_env):
    if family["name"] != "fireredasr-llm":
        pytest.skip("AsyncLLM once (seed 000's FireRed)")
    outputs = _example(plugin_env, family["vllm_dir"], family["clips"], "--async")
    assert [o["token_ids"] for o in outputs] == family["tokens"]


# -- vllm serve ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(family, plugin_env, tmp_path_factory):
    """``vllm serve vllm_dir`` (vLLM's OpenAI server module: vllm-cpu's ``vllm`` script
    cannot start); yields ``(base_url, model name)``."""
    import signal
    import urllib.request

    if family["name"] == "vibevoice-asr-hf":
        pytest.skip("served once per family (vibevoice-asr)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = str(family["vllm_dir"])
    log = tmp_path_factory.mktemp("serve") / "vllm.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model]
    cmd += ["--host", "127.0.0.1", "--port", str(port), *ENGINE_ARGS]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=plugin_env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not start:\n{log.read_text()[-4000:]}")
                time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1", model
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _expected(family: dict) -> list[str]:
    """What seed 000's code printed for the clips (vLLM's own detokenizer, whose text the
    server returns; its tokens are asrctl's pipeline's, test_seed_snippet_...)."""
    return [o["text"].strip() for o in family["plugin"]]


@pytest.mark.vllm
def test_serve_transcriptions_equal_the_seed_snippet(family, server):
    import openai

    base_url, model = server
    client = openai.OpenAI(base_url=base_url, api_key="x")
    texts = []
    for clip in family["clips"][:2]:  # at the family's rate (the server resamples its own way)
        with clip.open("rb") as f:
            result = client.audio.transcriptions.create(
                model=model,
                file=f,
                extra_body={"max_completion_tokens": MAX_TOKENS, "repetition_penalty": 1.0},
            )
        texts.append(result.text.strip())
    assert texts == _expected(family)[:2]


@pytest.mark.vllm
def test_serve_chat_with_audio_transcribes(family, server):
    """Chat completions with an audio part: the family's prompt (as asrctl's chat API)."""
    import openai

    base_url, model = server
    client = openai.OpenAI(base_url=base_url, api_key="x")
    clip = family["clips"][0]
    audio = base64.b64encode(clip.read_bytes()).decode()
    content = [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"repetition_penalty": 1.0},
    )
    assert reply.choices[0].message.content.strip() == _expected(family)[0]
    assert reply.usage.completion_tokens == len(family["tokens"][0])
