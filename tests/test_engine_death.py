"""asrctl.engine_death: a blocked step wakes with EngineDeadError when the engine process
dies (issue 18 #11: `transcribe` hung, or printed a traceback, when vLLM's engine was killed)."""

from __future__ import annotations

import multiprocessing
import queue
import time
from types import SimpleNamespace

import pytest

from asrctl.engine_death import watch_engine_death


def test_a_dead_engine_process_wakes_the_waiting_step() -> None:
    pytest.importorskip("vllm")
    from vllm.v1.engine.exceptions import EngineDeadError

    proc = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(60,))
    proc.start()
    try:
        outputs: queue.Queue = queue.Queue()
        manager = SimpleNamespace(sentinels=lambda: [proc.sentinel])
        client = SimpleNamespace(
            outputs_queue=outputs, resources=SimpleNamespace(engine_manager=manager)
        )
        assert watch_engine_death(SimpleNamespace(engine_core=client))
        with pytest.raises(queue.Empty):
            outputs.get(timeout=0.3)  # alive: nothing
        proc.kill()  # what the kernel's out-of-memory killer does
        assert isinstance(outputs.get(timeout=10), EngineDeadError)
    finally:
        proc.kill()
        proc.join()


def test_nothing_to_watch_without_engine_processes() -> None:
    assert not watch_engine_death(object())  # a stand-in engine
    in_process = SimpleNamespace(engine_core=SimpleNamespace(outputs_queue=queue.Queue()))
    assert not watch_engine_death(in_process)
