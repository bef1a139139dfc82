"""Wiring: the FastAPI app, its gatekeeping middleware, and ``serve()`` (uvicorn).

``serve`` loads the model and starts vLLM inside the event loop it then serves from, and
only then binds the port. On SIGINT/SIGTERM uvicorn stops accepting connections, waits
up to ``shutdown_timeout_s`` for in-flight requests to finish, and the lifespan hook then
stops the encoder worker and vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
import signal
import time
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from asrctl.embedding_cache import CachedEncoder, EmbeddingCache
from asrctl.engine import EngineOptions
from asrctl.server import (
    chat_api,
    funasr_api,
    openai_api,
    openai_realtime,
    realtime,
    ui_routes,
)
from asrctl.server.engine import AsyncModel
from asrctl.server.errors import ApiError, install_handlers
from asrctl.server.metrics import Metrics, endpoint_label
from asrctl.server.options import ServerOptions
from asrctl.server.state import ServerState

log = logging.getLogger("asrctl.server")

UPLOAD_PATHS = ("/v1/audio/transcriptions", "/asr", "/v1/chat/completions")
BASE64_PATHS = ("/v1/chat/completions",)  # audio inline as base64: 4/3 of its size
# Routes that need the key when one is set; /health and /metrics stay open for probes
# and scrapers (/metrics shows no paths or versions: see Metrics.render).
PROTECTED_PATHS = (*UPLOAD_PATHS, "/openapi.json")
SECRET_QUERY = re.compile(r"((?:^|[?&])api_key=)[^&\s\"]*", re.IGNORECASE)
FORM_OVERHEAD = 1 << 20  # multipart framing and text fields on top of the file itself
WS_PING_TIMEOUT_S = 60.0  # generous: a busy server answers pings late


def create_app(state: ServerState) -> FastAPI:
    """The ASGI app for ``state``; the lifespan closes the model on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        lag = asyncio.get_running_loop().create_task(state.metrics.watch_loop())
        try:
            yield
        finally:
            lag.cancel()
        await state.close()

    app = FastAPI(
        title="asrctl",
        summary="OpenAI-compatible speech recognition on vLLM",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.asr = state
    install_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(chat_api.router)
    app.include_router(funasr_api.router)
    app.include_router(realtime.router)
    app.include_router(openai_realtime.router)
    if state.options.ui:
        app.include_router(ui_routes.router)

    @app.get("/health")
    async def health() -> Response:
        if state.closing:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        try:
            await state.model.check_health()
        except Exception as e:  # a dead engine: report, do not raise
            return JSONResponse({"status": "error", "error": str(e)}, status_code=503)
        return JSONResponse({"status": "ok", "models": list(state.names)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(Gatekeeper, state=state)
    return app


class _TooLarge(Exception):
    pass


class Gatekeeper:
    """ASGI middleware for HTTP: API keys, the upload cap, and request metrics.

    The upload cap is checked against ``Content-Length`` before anything is read, and
    counted while a body without one (chunked) streams in.
    """

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.max_body = state.options.max_upload_bytes + FORM_OVERHEAD
        self.max_base64_body = state.options.max_upload_bytes * 4 // 3 + FORM_OVERHEAD

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.state.metrics
        endpoint = endpoint_label(scope["path"])
        status: dict[str, int | None] = {"code": None}  # None until a response starts

        async def send_status(message: MutableMapping[str, Any]) -> None:  # an ASGI message
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        metrics.in_progress.labels(endpoint).inc()
        try:
            error = self._refuse(scope)
            if error is not None:
                await error.response()(scope, receive, send_status)
                return
            await self.app(scope, self._counting(receive, self._cap(scope["path"])), send_status)
        except _TooLarge:
            if status["code"] is None:
                await self._too_large().response()(scope, receive, send_status)
        finally:
            metrics.in_progress.labels(endpoint).dec()
            metrics.requests.labels(endpoint, str(status["code"] or 500)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _refuse(self, scope: dict) -> ApiError | None:
        path = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        protected = path.startswith("/v1/") or path in PROTECTED_PATHS
        if protected and not self.state.authorized(headers):
            given = "authorization" in headers
            return ApiError(
                401,
                "Incorrect API key provided."
                if given
                else "Missing bearer authentication "
                "in header: pass `Authorization: Bearer YOUR_KEY`.",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        length = headers.get("content-length", "")
        if path in UPLOAD_PATHS and length.isdigit() and int(length) > self._cap(path):
            return self._too_large()
        return None

    def _too_large(self) -> ApiError:
        limit = self.state.options.max_upload_bytes / (1 << 20)
        return ApiError(
            413,
            f"the request body is larger than the upload limit of {limit:g} MiB",
            param="file",
            code="file_too_large",
        )

    def _cap(self, path: str) -> int:
        return self.max_base64_body if path in BASE64_PATHS else self.max_body

    def _counting(self, receive: Any, cap: int) -> Any:
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise _TooLarge
            return message

        return counted


def serve(model_dir: str | Path, options: ServerOptions, engine_options: EngineOptions) -> None:
    """Load the model, start vLLM and serve until SIGINT/SIGTERM (then shut down gracefully)."""
    with event_loop_runner() as runner:
        runner.run(_serve(model_dir, options, engine_options))


def event_loop_runner() -> asyncio.Runner:
    """A runner on uvloop where installed (vLLM depends on it; uvicorn picks it only when
    uvicorn makes the loop, and here asrctl does): every request's HTTP handling, vLLM's
    output handling and the encoder batcher share this one loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


async def start_state(
    model_dir: str | Path, options: ServerOptions, engine: EngineOptions
) -> ServerState:
    """Load the model and start vLLM, inside the event loop that will serve the app."""
    metrics = Metrics()
    model = await AsyncModel.start(
        model_dir,
        engine,
        device=options.device,
        encoder_dtype=options.encoder_dtype,
        cache_dir=options.cache_dir,
        batch_window_s=options.batch_window_ms / 1000,
        encoder_batch_size=options.encoder_batch_size,
        encoder_batch_seconds=options.encoder_batch_seconds,
        encoder_graphs=options.encoder_graphs,
        max_tokens=options.max_tokens,
        sampling_override=options.sampling_override,
        on_batch=metrics.on_encoder_batch,
    )
    if options.embedding_cache_mb > 0:  # the same audio sent again is not encoded again
        cache = EmbeddingCache(int(options.embedding_cache_mb * (1 << 20)))
        model.pipeline.encoder = CachedEncoder(model.encoder, model.sample_rate, cache)
    return ServerState.create(model, options, Path(model_dir), metrics)


async def _serve(model_dir: str | Path, options: ServerOptions, engine: EngineOptions) -> None:
    import uvicorn

    state = await start_state(model_dir, options, engine)
    config = uvicorn.Config(
        create_app(state),
        host=options.host,
        port=options.port,
        timeout_graceful_shutdown=max(1, round(options.shutdown_timeout_s)),
        ws_ping_timeout=WS_PING_TIMEOUT_S,
        log_config=_log_config(),
        lifespan="on",
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it shut down on once it is done; ignoring SIGTERM then
    # lets serve() return (exit 0) after the graceful shutdown instead of dying by it.
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        await server.serve()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not state.closing:  # the lifespan never ran (uvicorn failed to start)
            await state.close()


def _log_config() -> dict:
    """uvicorn's logging, with access lines on stderr like everything else."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    config.setdefault("filters", {})["secrets"] = {"()": RedactSecrets}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "secrets"]
    return config


class RedactSecrets(logging.Filter):
    """Masks ``api_key=...`` in logged request paths (``/ws?api_key=`` for browsers):
    uvicorn's access and WebSocket lines print the query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


def redact(text: str) -> str:
    return SECRET_QUERY.sub(r"\1***", text)
