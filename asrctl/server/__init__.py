"""``asrctl serve``: an OpenAI-compatible transcription server on vLLM's async engine.

Modules, from the engine outwards:

* ``engine``: the model (adapter, audio encoder, vLLM ``AsyncLLM`` with prompt embeddings)
  behind one coroutine per request; audio of concurrent requests is encoded together by
  ``batching.EncoderBatcher`` in a worker thread, and vLLM batches the LLM continuously.
* ``uploads``: multipart uploads read and decoded with the size and duration caps.
* ``formats``: the response formats (json, text, verbose_json, srt, vtt, SSE events).
* ``openai_api``, ``funasr_api``, ``realtime``: the routes (``/v1/...``, ``/asr``, ``/ws``);
  ``endpointing`` finds utterance ends in live audio for ``/ws``.
* ``app``: wiring (auth, limits, metrics, health) and ``serve()``, which runs uvicorn.
"""

from asrctl.server.options import RealtimeOptions, ServerOptions

__all__ = ["RealtimeOptions", "ServerOptions"]
