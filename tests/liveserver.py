"""``asrctl serve`` for tests: in a subprocess (started, awaited, always killed), or its app
in this process behind a TestClient."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

START_TIMEOUT_S = 300


class LiveServer:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(
    args: list[str], log: Path, *, env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """``python -m asrctl serve ARGS --port P``, yielded once /health answers 200.

    Teardown kills the whole process group (the server and vLLM's engine processes).
    """
    port = free_port()
    cmd = [sys.executable, "-m", "asrctl", "serve", *args, "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    srv = LiveServer(proc, f"http://127.0.0.1:{port}", log)
    try:
        _wait_healthy(srv)
        yield srv
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _wait_healthy(srv: LiveServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert srv.proc.poll() is None, f"server exited early:\n{srv.tail()}"
        try:
            if httpx.get(f"{srv.url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server not healthy after {START_TIMEOUT_S} s:\n{srv.tail()}")


@contextmanager
def in_process_server(model_dir: Path, options: Any, engine_options: Any) -> Iterator[Any]:
    """The app ``asrctl serve`` runs, in this process behind a ``TestClient`` (an
    ``httpx.Client``: the openai SDK takes it as ``http_client``). As in ``serve()``, the
    model and engine start inside the event loop that serves them: here in the app's
    lifespan, on the TestClient's loop. ``client.asr`` is the ServerState."""
    from fastapi.testclient import TestClient

    from asrctl.server.app import create_app, start_state

    served: dict[str, Any] = {}

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await served["app"](scope, receive, send)
            return
        await receive()  # lifespan.startup
        try:
            state = await start_state(model_dir, options, engine_options)
        except Exception as e:
            await send({"type": "lifespan.startup.failed", "message": repr(e)})
            raise
        served["state"], served["app"] = state, create_app(state)
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await state.close()
        await send({"type": "lifespan.shutdown.complete"})

    with TestClient(app) as client:
        client.asr = served["state"]
        yield client


def multipart_body(data: bytes, model: str, boundary: str = "asrctltestboundary") -> bytes:
    """A multipart/form-data transcription request (``model`` and ``file`` fields), for
    tests that send the body themselves (slowly, in chunks)."""
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
