"""``asrctl serve`` in a subprocess for a test module: started, awaited, always killed."""

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
