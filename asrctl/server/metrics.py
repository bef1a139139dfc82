"""Prometheus metrics (``GET /metrics``): ours under ``asrctl_``, then vLLM's own.

Endpoint labels come from a fixed list, so unknown paths cannot grow the label set.
``/metrics`` is open without a key (for scrapers), so what it shows is cleaned of what
would tell a stranger about the host: vLLM's ``model_name`` label (the absolute path of
the exported LLM) becomes the served model name, any other label value that looks like a
path is masked, and ``python_info`` (the interpreter's version) is left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

ENDPOINTS = (
    "/v1/audio/transcriptions",
    "/asr",
    "/ws",
    "/v1/models",
    "/health",
    "/metrics",
)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
LAG_INTERVAL_S = 0.05  # how often the event loop's lag is sampled
HIDDEN_FAMILIES = frozenset({"python_info"})
MASK = "-"


def endpoint_label(path: str) -> str:
    if path.startswith("/v1/models"):
        return "/v1/models"
    return path if path in ENDPOINTS else "other"


class Metrics:
    """The server's metrics, in a registry of their own."""

    def __init__(self, model_name: str = "asrctl") -> None:
        self.model_name = model_name  # shown for vLLM's model_name label
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "asrctl_requests",
            "HTTP requests (and WebSocket sessions) by endpoint and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "asrctl_request_duration_seconds",
            "Time from request to last byte of the response (WebSocket: per result)",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "asrctl_audio_seconds",
            "Seconds of audio transcribed",
            ["endpoint"],
            registry=r,
        )
        self.in_progress = Gauge(
            "asrctl_requests_in_progress",
            "HTTP requests being served",
            ["endpoint"],
            registry=r,
        )
        self.ws_sessions = Gauge("asrctl_websocket_sessions", "Open WebSocket sessions", registry=r)
        self.generating = Gauge(
            "asrctl_requests_generating",
            "Transcriptions being encoded or decoded",
            registry=r,
        )
        self.queue_depth = Gauge(
            "asrctl_encoder_queue_depth",
            "Transcriptions waiting for the audio encoder",
            registry=r,
        )
        self.encoder_batch = Histogram(
            "asrctl_encoder_batch_size",
            "Utterances per audio-encoder batch",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.encoder_seconds = Histogram(
            "asrctl_encoder_batch_duration_seconds",
            "Time to encode one batch and build its prompts",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_text = Histogram(
            "asrctl_time_to_first_text_seconds",
            "Time from decoded audio to the first generated text",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        self.loop_lag = Histogram(
            "asrctl_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled every 50 ms): every request's "
            "HTTP handling and vLLM's output handling share this loop",
            buckets=LAG_BUCKETS,
            registry=r,
        )

    async def watch_loop(self, interval_s: float = LAG_INTERVAL_S) -> None:
        """Sample the event loop's lag until cancelled (started by the app's lifespan)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            self.loop_lag.observe(max(0.0, loop.time() - due))

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def on_encoder_batch(self, size: int, seconds: float) -> None:
        self.encoder_batch.observe(size)
        self.encoder_seconds.observe(seconds)

    def render(self) -> bytes:
        """Text exposition of ours, then of the default registry (vLLM's metrics)."""
        return generate_latest(self.registry) + generate_latest(_Public(self))


class _Public:
    """The default registry (vLLM's metrics, the process collector) without what would
    identify the host: see the module docstring."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if family.name in HIDDEN_FAMILIES:
                continue
            family.samples = [s._replace(labels=self._clean(s.labels)) for s in family.samples]
            yield family

    def _clean(self, labels: dict[str, str]) -> dict[str, str]:
        return {
            k: self.metrics.model_name if k == "model_name" else _mask_path(v)
            for k, v in labels.items()
        }


def _mask_path(value: str) -> str:
    return MASK if "/" in value or "\\" in value else value
