"""The Python front door: ``asr = asrctl.load(model_dir)``, then ``asr.transcribe(...)``.

One engine per loaded model. :func:`load` checks and exports the model (``asrctl setup``'s
work, when not done yet), loads its audio encoder and starts vLLM's *async* engine, the one
the server runs (:class:`~asrctl.server.engine.AsyncModel`), in an event loop on a
background thread that the :class:`ASR` object owns. Every call goes through that one engine:

* :meth:`ASR.transcribe` (blocking) and :meth:`ASR.transcribe_async` (awaitable from any
  event loop: the caller's loop only waits) submit every input at once; vLLM batches them
  with each other and with whatever else is in flight, so calls from many threads or tasks
  share the engine. Inputs longer than the model takes in one pass (or all, with
  ``vad=True``) go through :class:`~asrctl.segment.LongAudio`, as in ``asrctl transcribe``.
* :meth:`ASR.stream` (and :meth:`ASR.stream_async`) decodes live audio with
  :class:`~asrctl.streaming.StreamingSession`, the machinery of the server's ``/ws``.

The same audio submitted twice is encoded once (:mod:`asrctl.embedding_cache`, bounded by
``embedding_cache_mb``).

For the largest offline batches, :class:`~asrctl.transcribe.Transcriber` (what the CLI runs,
vLLM's synchronous engine, no event loop) remains available.

vLLM starts its engine core in a new process that re-imports the main script, so a script
must call :func:`load` under ``if __name__ == "__main__":``; :func:`load` raises
:class:`~asrctl.errors.MainGuardError` when it is not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import os
import queue
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

from asrctl.errors import (
    AsrctlError,
    AudioError,
    InputError,
    OptionsError,
    TranscriptionError,
)
from asrctl.inputs import AudioItem, iter_inputs
from asrctl.results import Failure, Transcript
from asrctl.server.options import SERVER_ENCODER_BATCH_SIZE

if TYPE_CHECKING:
    from asrctl.engine import EngineOptions
    from asrctl.server.engine import AsyncModel
    from asrctl.server.options import RealtimeOptions
    from asrctl.streaming import StreamingSession, StreamUpdate
    from asrctl.transcribe import TranscribeOptions

T = TypeVar("T")
Input = str | os.PathLike[str] | bytes | np.ndarray | tuple[np.ndarray, int] | AudioItem
Inputs = Input | Iterable[Input]
TOO_LONG_HINT = "pass vad=None or vad=True to split long audio, or raise max_model_len"
MAX_IN_FLIGHT = 256  # inputs loaded and submitted at once per call
DECODING_OPTIONS = frozenset(
    {
        *("itn", "max_tokens", "temperature", "top_p", "top_k", "seed"),
        *("repetition_penalty", "frequency_penalty", "presence_penalty"),
        *("word_timestamps", "raw_text"),
    }
)
ASR_OPTIONS = ("device", "encoder_dtype", "cache_dir", "encoder_batch_size", "max_tokens")


def load(
    model_dir: str | os.PathLike[str],
    *,
    embedding_cache_mb: float = 256.0,
    **options: Any,
) -> ASR:
    """Load a model directory and start its engine; see the module docstring.

    Args:
        model_dir: a Fun-ASR-Nano, FireRedASR-LLM, GLM-ASR-Nano or VibeVoice-ASR folder.
        embedding_cache_mb: memory for audio embeddings kept for re-submitted audio
            (0: no cache).
        options: ``device``, ``encoder_dtype``, ``cache_dir``, ``encoder_batch_size``,
            ``max_tokens`` for asrctl; :class:`~asrctl.engine.EngineOptions` fields
            (``dtype``, ``max_model_len``, ``gpu_memory_utilization``, ``max_num_seqs``,
            ``enforce_eager``, ``tensor_parallel_size``, ``seed``); anything else is passed
            to vLLM's ``EngineArgs`` as is.

    Raises:
        MainGuardError: called at a script's top level without the ``__main__`` guard.
        ModelDirError, UnknownFamilyError: the folder is not a usable model.
        EngineError: vLLM could not start.
    """
    from asrctl import mainguard

    mainguard.check("asrctl.load")
    asr_options = {k: options.pop(k) for k in ASR_OPTIONS if k in options}
    return ASR(
        Path(model_dir).expanduser(),
        _engine_options(options),
        embedding_cache_bytes=int(embedding_cache_mb * (1 << 20)),
        **asr_options,
    )


def _engine_options(options: dict[str, Any]) -> EngineOptions:
    from asrctl.engine import EngineOptions

    names = {f.name for f in dataclasses.fields(EngineOptions)} - {"extra"}
    known = {k: options.pop(k) for k in list(options) if k in names}
    return EngineOptions(**known, extra=dict(options))


class ASR:
    """A loaded model and its engine; create with :func:`asrctl.load`. Close it (or use
    it as a context manager) to stop vLLM's processes."""

    def __init__(
        self,
        model_dir: Path,
        engine_options: EngineOptions,
        *,
        device: str | None = None,
        encoder_dtype: str = "auto",
        cache_dir: Path | None = None,
        encoder_batch_size: int = SERVER_ENCODER_BATCH_SIZE,
        max_tokens: int | None = None,
        embedding_cache_bytes: int = 256 << 20,
    ) -> None:
        from asrctl.embedding_cache import CachedEncoder, EmbeddingCache
        from asrctl.server.engine import AsyncModel

        self.model_dir = model_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="asrctl-engine-loop", daemon=True
        )
        self._thread.start()
        self._closed = False
        start = AsyncModel.start(
            model_dir,
            engine_options,
            device=device,
            encoder_dtype=encoder_dtype,
            cache_dir=cache_dir,
            encoder_batch_size=encoder_batch_size,
            max_tokens=max_tokens,
        )
        try:
            self.model: AsyncModel = self._run(start)
        except BaseException:
            self._stop_loop()
            raise
        if embedding_cache_bytes > 0:
            cache = EmbeddingCache(embedding_cache_bytes)
            encoder = CachedEncoder(self.model.encoder, self.sample_rate, cache)
            self.model.pipeline.encoder = encoder
        self.adapter = self.model.adapter  # LongAudio reads the family from here

    # -- life cycle ---------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """The model's sample rate (inputs are resampled to it)."""
        return self.model.sample_rate

    def close(self) -> None:
        """Stop the encoder worker, vLLM's engine processes and the background loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self.model.close())
        finally:
            self._stop_loop()
        # vLLM's AsyncLLM shuts down again in __del__, which fails (TypeError) when that
        # runs while the interpreter tears its modules down; it is shut down already
        llm = getattr(self.model.engine, "engine", None)
        with contextlib.suppress(AttributeError, TypeError):
            llm.shutdown = _shut_down_already  # type: ignore[union-attr]
        del llm
        gc.collect()

    def __enter__(self) -> ASR:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop_loop(self) -> None:
        """Cancel what still runs in the loop (vLLM's output handler), as asyncio.run
        does, then stop it."""
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_tasks(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if self._closed:
            coro.close()
            raise AsrctlError("this model is closed", hint="load it again with asrctl.load")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("ASR methods cannot block inside the engine's own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- transcription ------------------------------------------------------------------

    def transcribe(
        self,
        inputs: Inputs,
        *,
        sample_rate: int | None = None,
        language: str | None = None,
        hotwords: Sequence[str] = (),
        vad: bool | None = None,
        errors: Literal["raise", "return"] = "raise",
        **decoding: Any,
    ) -> list[Transcript]:
        """Transcribe inputs and return one :class:`~asrctl.results.Transcript` per audio
        item, in input order.

        Args:
            inputs: one input or a list of them. An input is a path to an audio file, a
                folder (its audio files, sorted), a ``wav.scp`` / ``segments`` / ``.jsonl``
                manifest (its entries, in order), the bytes of an audio file, a numpy array
                (with ``sample_rate=``), an ``(array, sample_rate)`` tuple, or an
                :class:`~asrctl.inputs.AudioItem`. Keys: file names as ``asrctl transcribe``
                makes them; arrays and bytes get their position in the list (``0000``, ...).
            sample_rate: the rate of bare numpy arrays, in Hz.
            language, hotwords: prompt options, where the family supports them.
            vad: split long inputs at pauses: None = only those longer than the model's
                per-pass limit; True = every input; False = none (long ones fail).
            errors: ``"raise"``: if any input fails, raise :class:`TranscriptionError`
                (naming each failed input; its ``results`` keeps the others) once all are
                done. ``"return"``: put a :class:`~asrctl.results.Failure` in its place.
            decoding: ``itn``, ``max_tokens``, ``temperature``, ``top_p``, ``top_k``,
                ``seed``, ``repetition_penalty``, ``frequency_penalty``,
                ``presence_penalty``, ``word_timestamps`` (on: where the model can time
                words), ``raw_text``: as in :class:`~asrctl.transcribe.TranscribeOptions`.

        Raises:
            TranscriptionError: some inputs failed (with ``errors="raise"``).
            InputError: an input is missing or malformed (before anything is transcribed).
            OptionsError: the family does not support the options (e.g. the language).
        """
        job = self._job(inputs, sample_rate, language, hotwords, decoding)
        return self._run(self._transcribe_items(*job, vad, errors))

    async def transcribe_async(
        self,
        inputs: Inputs,
        *,
        sample_rate: int | None = None,
        language: str | None = None,
        hotwords: Sequence[str] = (),
        vad: bool | None = None,
        errors: Literal["raise", "return"] = "raise",
        **decoding: Any,
    ) -> list[Transcript]:
        """:meth:`transcribe`, awaitable from any event loop (the engine runs in the
        model's own loop; yours only waits). Concurrent calls share the engine."""
        job = self._job(inputs, sample_rate, language, hotwords, decoding)
        return await asyncio.wrap_future(self._submit(self._transcribe_items(*job, vad, errors)))

    def _job(
        self,
        inputs: Inputs,
        sample_rate: int | None,
        language: str | None,
        hotwords: Sequence[str],
        decoding: dict[str, Any],
    ) -> tuple[list[AudioItem], TranscribeOptions]:
        from asrctl.transcribe import TranscribeOptions

        if isinstance(hotwords, str):
            hotwords = [hotwords]
        unknown = set(decoding) - DECODING_OPTIONS
        if unknown:
            raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
        options = TranscribeOptions(language=language, hotwords=tuple(hotwords), **decoding)
        self.model.check_prompt(options.prompt)  # fail fast on unsupported options
        return to_items(inputs, sample_rate), options

    async def _transcribe_items(
        self,
        items: list[AudioItem],
        options: TranscribeOptions,
        vad: bool | None,
        errors: str,
    ) -> list[Transcript]:
        """In the engine's loop: short inputs directly, long ones through LongAudio."""
        from asrctl.segment import LongAudio

        long = LongAudio(_Front(self), vad=vad)
        limit = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def one(item: AudioItem) -> Transcript | Failure:
            if long.needs_vad(item):
                return await asyncio.to_thread(_through, long, item, options)
            async with limit:
                return await self._one(item, options)

        results = await asyncio.gather(*(one(item) for item in items))
        failures = [r for r in results if isinstance(r, Failure)]
        if failures and errors != "return":
            raise TranscriptionError(failures, list(results))
        return list(results)  # type: ignore[arg-type]

    async def _one(self, item: AudioItem, options: TranscribeOptions) -> Transcript | Failure:
        """One input through the async engine, in one pass."""
        try:
            audio = await asyncio.to_thread(item.load, self.sample_rate)
        except AudioError as e:
            return Failure(item.key, str(e))
        prompt = options.prompt
        why = self.model.pipeline.unfit(
            item.key, len(audio), prompt, hint=TOO_LONG_HINT, window=True
        )
        if why is not None:
            return Failure(item.key, why)
        began = time.perf_counter()
        try:
            result = await self.model.transcribe(audio, prompt, options.decode)
        except OptionsError as e:
            return Failure(item.key, f"{item.key}: {e}")
        timing = {"decode_s": round(time.perf_counter() - began, 4)}
        return dataclasses.replace(result, key=item.key, timing=result.timing | timing)

    # -- live audio ---------------------------------------------------------------------

    def stream(
        self,
        chunks: Iterable[np.ndarray],
        *,
        sample_rate: int,
        language: str | None = None,
        hotwords: Sequence[str] = (),
        options: RealtimeOptions | None = None,
    ) -> Iterator[StreamUpdate]:
        """Transcribe audio as it arrives, yielding :class:`~asrctl.streaming.StreamUpdate`
        objects: confirmed sentences (with times) and the tentative text of the utterance in
        progress. The last one has ``is_final`` set and holds the whole transcript.

        ``chunks`` are float32 (or int16) mono arrays at ``sample_rate``, of any length; the
        iterator may block between chunks (a microphone). Updates are yielded after each
        chunk as the partial decodes finish (they run while chunks keep coming), and once
        more at the end. The same machinery as the server's ``/ws`` (``options``: its
        endpointing and partial settings).
        """
        updates: queue.SimpleQueue[StreamUpdate] = queue.SimpleQueue()
        session = self._session(sample_rate, language, hotwords, options, updates.put)
        try:
            for chunk in chunks:
                self._run(session.feed(_samples(chunk)))
                while not updates.empty():
                    yield updates.get()
            final = self._run(session.finish())
            while not updates.empty():
                yield updates.get()
            yield final
        finally:
            if not self._closed:
                self._run(session.cancel_partial())

    async def stream_async(
        self,
        chunks: AsyncIterable[np.ndarray] | Iterable[np.ndarray],
        *,
        sample_rate: int,
        language: str | None = None,
        hotwords: Sequence[str] = (),
        options: RealtimeOptions | None = None,
    ) -> AsyncIterator[StreamUpdate]:
        """:meth:`stream` for asyncio code: ``chunks`` may be an async iterable (a
        WebSocket, a queue); updates are yielded as they come, also while the next chunk
        is awaited."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[StreamUpdate] = asyncio.Queue()

        def put(update: StreamUpdate) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, update)

        session = self._session(sample_rate, language, hotwords, options, put)

        async def run(coro: Coroutine[Any, Any, T]) -> T:
            return await asyncio.wrap_future(self._submit(coro))

        try:
            async for chunk in _aiter(chunks):
                await run(session.feed(_samples(chunk)))
                while not updates.empty():
                    yield updates.get_nowait()
            final = await run(session.finish())
            await asyncio.sleep(0)  # updates posted before the final one arrive first
            while not updates.empty():
                yield updates.get_nowait()
            yield final
        finally:
            if not self._closed:
                await run(session.cancel_partial())

    def _session(
        self,
        sample_rate: int,
        language: str | None,
        hotwords: Sequence[str],
        options: RealtimeOptions | None,
        put: Callable[[StreamUpdate], None],
    ) -> StreamingSession:
        """A streaming session in the engine's loop, decoding through the engine and
        handing its updates to ``put`` (called in the engine's loop)."""
        from asrctl.adapters.base import PromptOptions
        from asrctl.streaming import StreamingSession

        if isinstance(hotwords, str):
            hotwords = [hotwords]
        prompt = PromptOptions(language=language, hotwords=tuple(hotwords))
        self.model.check_prompt(prompt)

        async def decode(audio: np.ndarray, max_tokens: int | None) -> str:
            return await self._decode_live(audio, sample_rate, prompt, max_tokens)

        async def on_update(update: StreamUpdate) -> None:
            put(update)

        async def make() -> StreamingSession:
            family = self.model.adapter.family
            return StreamingSession(
                decode,
                sample_rate,
                options,
                model_max_s=family.max_audio_seconds,
                on_update=on_update,
            )

        return self._run(make())

    async def _decode_live(
        self, audio: np.ndarray, rate: int, prompt: Any, max_tokens: int | None
    ) -> str:
        from asrctl.audio import load_audio
        from asrctl.pipeline import DecodeOptions

        if rate != self.sample_rate:
            audio = load_audio(audio, sample_rate=self.sample_rate, key="stream", source_rate=rate)
        result = await self.model.transcribe(audio, prompt, DecodeOptions(max_tokens=max_tokens))
        return result.text


def _shut_down_already(*args: object, **kwargs: object) -> None:
    pass


async def _cancel_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _Front:
    """What :class:`~asrctl.segment.LongAudio` needs of a transcriber, over the async
    engine: its segments go through :meth:`ASR._one` concurrently (called from a worker
    thread; the engine's loop runs them)."""

    def __init__(self, asr: ASR) -> None:
        self.asr = asr
        self.adapter = asr.model.adapter

    @property
    def sample_rate(self) -> int:
        return self.asr.sample_rate

    def transcribe(
        self, items: Iterable[AudioItem], options: TranscribeOptions | None = None
    ) -> Iterator[list[Transcript | Failure]]:
        from asrctl.transcribe import TranscribeOptions

        options = options or TranscribeOptions()
        futures = [self.asr._submit(self.asr._one(item, options)) for item in items]
        for future in concurrent.futures.as_completed(futures):
            yield [future.result()]


def _through(long: Any, item: AudioItem, options: TranscribeOptions) -> Transcript | Failure:
    """One long input through LongAudio (blocking; run in a worker thread)."""
    results = [r for batch in long.transcribe([item], options) for r in batch]
    return results[0] if results else Failure(item.key, f"{item.key}: no result")


def to_items(inputs: Inputs, sample_rate: int | None = None) -> list[AudioItem]:
    """The audio items of :meth:`ASR.transcribe`'s ``inputs``, in order (see there).

    Raises:
        InputError: a path is missing or malformed, an array has no sample rate, an input
            is of an unknown type, or two items share a key.
    """
    single = isinstance(inputs, str | os.PathLike | bytes | bytearray | np.ndarray | AudioItem)
    listed: list[Any]
    if single or _is_pair(inputs):
        listed = [inputs]
    elif isinstance(inputs, Iterable):
        listed = list(inputs)  # a generator too
    else:
        raise InputError(f"expected a path, audio data or a list of them, got {type(inputs)}")
    width = max(4, len(str(len(listed) - 1)))
    items: list[AudioItem] = []
    for i, one in enumerate(listed):
        key = f"{i:0{width}d}"
        if isinstance(one, AudioItem):
            items.append(one)
        elif isinstance(one, str | os.PathLike):
            items += iter_inputs(one)
        elif isinstance(one, bytes | bytearray | memoryview):
            items.append(AudioItem(key, bytes(one), "bytes"))
        elif isinstance(one, np.ndarray):
            if sample_rate is None:
                raise InputError(
                    f"input {i}: a numpy array needs its sample rate",
                    hint="pass sample_rate=16000 (say), or (array, rate) tuples",
                )
            items.append(AudioItem(key, one, "array", source_rate=sample_rate))
        elif _is_pair(one):
            array, rate = one  # type: ignore[misc]
            items.append(AudioItem(key, array, "array", source_rate=int(rate)))
        else:
            raise InputError(
                f"input {i}: expected a path, bytes, a numpy array or (array, sample_rate), "
                f"got {type(one).__name__}"
            )
    seen: set[str] = set()
    for item in items:
        if item.key in seen:
            raise InputError(f"two inputs share the key {item.key!r}", hint="keys must be unique")
        seen.add(item.key)
    return items


def _is_pair(value: object) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], np.ndarray)
        and isinstance(value[1], int | np.integer)
    )


async def _aiter(chunks: AsyncIterable[T] | Iterable[T]) -> AsyncIterator[T]:
    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            yield chunk
    else:
        for chunk in chunks:
            yield chunk


def _samples(chunk: np.ndarray | Sequence[float]) -> np.ndarray:
    """A chunk as float32 mono samples in [-1, 1] (int16 scaled)."""
    array = np.asarray(chunk)
    if array.dtype == np.int16:
        return array.astype(np.float32).reshape(-1) / 32768.0
    return array.astype(np.float32, copy=False).reshape(-1)
