"""Waking a blocked engine step when vLLM's engine process dies.

vLLM 0.32's synchronous client (``SyncMPClient``, under ``LLMEngine``) waits on its output
queue without a timeout. When the engine-core process dies (killed by the kernel for want
of memory, or by hand), its monitor thread marks the client dead and stops the thread
that fills the queue, but puts nothing on it: ``LLMEngine.step()`` then blocks forever and
``transcribe`` never ends. :func:`watch_engine_death` waits on the engine processes and
puts vLLM's own ``EngineDeadError`` on that queue when one ends, so the blocked step
raises it; ``asrctl.cli`` reports it as an engine error (exit 5). (A worker process that
dies is reported by the engine core itself, through the queue.)
"""

from __future__ import annotations

import threading
from multiprocessing import connection
from typing import Any


def watch_engine_death(llm_engine: Any) -> bool:
    """Watch the engine processes of a vLLM ``LLMEngine``; False if it has none to watch
    (an in-process core, a stand-in, another vLLM layout)."""
    client = getattr(llm_engine, "engine_core", None)
    outputs = getattr(client, "outputs_queue", None)
    manager = getattr(getattr(client, "resources", None), "engine_manager", None)
    sentinels = list(getattr(manager, "sentinels", lambda: [])())
    if outputs is None or not sentinels:
        return False
    from vllm.v1.engine.exceptions import EngineDeadError

    def wait() -> None:
        connection.wait(sentinels)
        # After a deliberate shutdown nobody reads the queue any more: harmless there.
        outputs.put_nowait(EngineDeadError(suppress_context=True))

    threading.Thread(target=wait, name="asrctl-engine-watch", daemon=True).start()
    return True
