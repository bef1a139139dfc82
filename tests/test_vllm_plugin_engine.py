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
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from speechlike import noise
from test_vllm_plugin import setup_model

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
    vllm_dir = setup_model(model_dir)
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


def _python(env: dict[str, str], cwd: Path, *args: str) -> str:
    """``python ARGS`` as a user runs it (vLLM spawns processes); its stdout, or a failure
    showing the end of its stderr."""
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def _example(env: dict[str, str], vllm_dir: Path, clips: list[Path], *extra: str) -> list:
    args = [*map(str, clips), *extra, "--max-tokens", str(MAX_TOKENS), *ENGINE_ARGS]
    stdout = _python(env, REPO, str(EXAMPLE), str(vllm_dir), *args)
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


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
    stdout = _python(plugin_env, tmp_path, "demo.py")
    printed = [line for line in stdout.splitlines() if line.startswith("Transcription: ")]
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
