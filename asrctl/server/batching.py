"""Cross-request batching of the audio encoder.

Requests arrive one coroutine at a time; the encoder is fastest on batches. An
:class:`EncoderBatcher` queues each request's job, and one consumer task takes the first
job, waits at most ``window_s`` for more (or until ``max_batch`` are queued), and runs the
whole batch in a single worker thread, so the event loop never waits on PyTorch. Jobs
that arrive while a batch is running are taken together as soon as it finishes.

The wait is skipped when it would only add latency: a job that finds nothing else queued
and came more than ``window_s`` after the job before it (light load: one client, or
requests spaced out) runs at once. Under load, jobs come closer together than the window
and are batched as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger("asrctl.server")

J = TypeVar("J")  # a job
R = TypeVar("R")  # its result

# run_batch returns, for each job, its result or the exception that job raised.
BatchFn = Callable[[Sequence[J]], Sequence["R | BaseException"]]


class BatcherClosed(RuntimeError):
    """The batcher was closed (the server is shutting down)."""


class EncoderBatcher(Generic[J, R]):
    """Batches jobs submitted by concurrent coroutines into calls of ``run_batch``.

    Args:
        run_batch: runs a list of jobs in the worker thread; returns one result (or
            exception) per job, in order. An exception it raises fails the whole batch.
        window_s: longest wait for more jobs after the first of a batch.
        max_batch: most jobs per call.
        on_batch: called on the event loop with (batch size, seconds the call took).
    """

    def __init__(
        self,
        run_batch: BatchFn,
        *,
        window_s: float,
        max_batch: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._window_s = window_s
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[J, asyncio.Future[R]]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="asrctl-encoder")
        self._task: asyncio.Task | None = None
        self._last_submit = -math.inf  # loop time of the latest submit
        self._gap = math.inf  # seconds between the latest two submits

    def start(self) -> None:
        """Start the consumer task on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._consume())

    @property
    def depth(self) -> int:
        """Jobs waiting for the encoder."""
        return self._queue.qsize()

    async def submit(self, job: J) -> R:
        """Queue ``job`` and wait for its result (or its exception)."""
        if self._task is None or self._task.done():
            raise BatcherClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._gap, self._last_submit = now - self._last_submit, now
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put_nowait((job, future))
        return await future

    async def close(self) -> None:
        """Stop taking jobs, fail the queued ones and let the running batch finish."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(BatcherClosed("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def _collect(self) -> list[tuple[J, asyncio.Future[R]]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        if self._queue.empty() and self._gap > self._window_s:
            return batch  # light load: nobody is likely to come within the window
        deadline = loop.time() + self._window_s
        while len(batch) < self._max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return [(job, f) for job, f in batch if not f.done()]  # skip cancelled waiters

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            start = loop.time()
            try:
                jobs = [job for job, _ in batch]
                results = await loop.run_in_executor(self._executor, self._run_batch, jobs)
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} jobs")
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(BatcherClosed("the server is shutting down"))
                raise
            except Exception as e:  # the batch failed as a whole; keep serving
                log.exception("audio encoder batch of %d failed", len(batch))
                results = [e] * len(batch)
            if self._on_batch is not None:
                self._on_batch(len(batch), loop.time() - start)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
