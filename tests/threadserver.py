"""The real HTTP stack (uvicorn, multipart parsing, decoding pool) around ``test_server``'s
``FakeModel``, served from a thread of the test process on a free port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from liveserver import free_port
from test_server import KEY, FakeModel

from asrctl.server.app import create_app
from asrctl.server.metrics import Metrics
from asrctl.server.options import ServerOptions
from asrctl.server.state import ServerState

START_TIMEOUT_S = 30
KEEP_ALIVE_S = 300


@dataclass
class ThreadServer:
    url: str
    state: ServerState
    thread: threading.Thread

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


@contextmanager
def thread_server(**options) -> Iterator[ThreadServer]:
    """Serve a :class:`FakeModel` (key ``KEY``, served name ``tiny``) until the block ends."""
    opts = {"served_model_names": ("tiny",), "api_keys": (KEY,), "max_upload_mb": 4} | options
    state = ServerState.create(FakeModel(), ServerOptions(**opts), Path("/models/x"), Metrics())
    port = free_port()
    config = uvicorn.Config(
        create_app(state),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        # a pooled connection the server closes as the client reuses it is a ReadError
        # for a POST (not retried); a long keep-alive keeps that race out of the tests
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="asrctl-test-server", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
        time.sleep(0.05)
    try:
        yield ThreadServer(url, state, thread)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
