"""Scale-out on Ray: asrctl's own pipeline in Ray actors, fed shards of one input list.

:class:`RayTranscriber` has the interface of :class:`asrctl.segment.LongAudio`
(``transcribe(items, options)`` yields lists of finished results), so the CLI writes its
results exactly as in a single-process run: one writer (this process, the Ray driver)
appends them to the one output folder (:class:`asrctl.results.ResultsDir`) as they come.

* **Workers**: ``num_workers`` Ray actors, each with ``gpus_per_worker`` GPUs and
  ``cpus_per_worker`` CPUs, each holding a :class:`~asrctl.transcribe.Transcriber` wrapped
  in :class:`~asrctl.segment.LongAudio`: the same code path as ``asrctl transcribe``
  without ``--ray``, nothing reimplemented. The model folder must be at the same path on
  every node (a shared file system); its LLM is exported once, here, before any worker
  starts (:func:`asrctl.export.prepare`), so the workers only reuse the export. With a
  read-only model folder, pass a shared ``--cache-dir`` (else each node exports its own).
* **Several engines per GPU** (``engines_per_gpu`` K > 1, or a fractional
  ``gpus_per_worker``): K workers share each GPU (1/K of a GPU each in Ray's
  accounting), each its own process with its own vLLM engine, which gets 1/K of
  ``gpu_memory_utilization`` (read as what the K engines of one GPU take together;
  default :data:`GPU_MEMORY_UTILIZATION`, leaving room for each worker's audio encoder). One
  vLLM engine's scheduler is CPU-bound on a small LLM and leaves the GPU mostly idle;
  K processes drive it K times as hard. Workers sharing a GPU start one after another:
  vLLM sizes its KV cache from the free memory it profiles at start, assuming no other
  process changes its use meanwhile, and fails its check when one does.
* **Shards**: the inputs not done yet are cut into shards; each worker takes the next
  shard when it is free, and streams its results back batch by batch (a Ray streaming
  generator), each written at once.
* **Failures**: a worker process that dies costs only its in-flight work: the driver
  knows which keys of the shard came back, and puts the others back in the queue for any
  worker (Ray restarts the dead actor, up to ``max_restarts`` times). A shard whose worker
  died :data:`MAX_SHARD_ATTEMPTS` times has its remaining inputs reported as failures
  (retried by ``--resume``, like every failure). No key is written twice: only this
  process writes, and a key is re-queued only if it never came back.
* **Resume**: the output folder is the single-process one, so ``--resume`` works the
  same, whether the run stopped on its own, lost workers, or lost the driver.

``ray`` is an optional dependency (``pip install 'asrctl[ray]'``), imported here only.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asrctl.engine import GPU_MEMORY_UTILIZATION
from asrctl.errors import AsrctlError, OptionsError

if TYPE_CHECKING:
    from asrctl.engine import EngineOptions
    from asrctl.inputs import AudioItem
    from asrctl.results import Failure, Transcript
    from asrctl.transcribe import TranscribeOptions

log = logging.getLogger("asrctl")

MAX_SHARD_ITEMS = 2048  # most inputs in one automatic shard
SHARDS_PER_WORKER = 4  # automatic shards: at least this many per worker (balance)
MAX_SHARD_ATTEMPTS = 3  # a shard's worker may die this often before its inputs fail
LOCAL_OBJECT_STORE_BYTES = 200 * 1024**2  # a local cluster's object store (results are small)
LOCAL_IP = "127.0.0.1"
FORWARDED_ENV = ("ASRCTL_", "VLLM_", "HF_", "OMP_NUM_THREADS")  # driver env the workers get


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide to run.

    Attributes:
        address: a Ray cluster to join (``ray start --head`` printed it; "auto": the one
            this node belongs to); "local": a new local cluster (``--data-parallel``);
            None: ``$RAY_ADDRESS`` if set, else a new local cluster.
        num_workers: pipeline replicas (Ray actors); None: one per ``gpus_per_worker`` GPUs
            in the cluster, or 1 without GPUs.
        gpus_per_worker: GPUs per replica; None: ``tensor_parallel_size`` where the
            cluster has GPUs, else 0 (CPU).
        cpus_per_worker: CPUs Ray reserves per replica.
        shard_size: inputs per shard; None: at most 2048, at least 4 shards per worker.
        local_cpus: CPUs of a new local cluster (None: Ray counts them).
        max_restarts: times Ray restarts each dead actor.
        engines_per_gpu: pipeline replicas sharing each GPU (1/K GPU each); see the
            module docstring. Not with ``gpus_per_worker``.
    """

    address: str | None = None
    num_workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    shard_size: int | None = None
    local_cpus: int | None = None
    max_restarts: int = 3
    engines_per_gpu: int = 1

    def __post_init__(self) -> None:
        if self.engines_per_gpu < 1:
            raise OptionsError("--engines-per-gpu must be at least 1")
        if self.engines_per_gpu > 1 and self.gpus_per_worker is not None:
            raise OptionsError(
                "--engines-per-gpu K gives each worker 1/K of a GPU: not with --gpus-per-worker"
            )
        if self.num_workers is not None and self.num_workers < 1:
            raise OptionsError("--num-workers must be at least 1")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise OptionsError("--gpus-per-worker must be at least 0")
        if self.cpus_per_worker < 0:
            raise OptionsError("--cpus-per-worker must be at least 0")
        if self.shard_size is not None and self.shard_size < 1:
            raise OptionsError("--shard-size must be at least 1")


@dataclass(frozen=True)
class PipelineSpec:
    """What every worker builds: the arguments of ``Transcriber`` and ``LongAudio``."""

    model_dir: Path
    engine_options: EngineOptions
    device: str | None = None
    cache_dir: Path | None = None
    encoder_dtype: str = "auto"
    vad: bool | None = None
    torch_threads: int | None = None  # torch CPU threads of each worker (None: as it is)


@dataclass(frozen=True)
class WorkerInfo:
    pid: int
    node: str
    device: str
    gpus: tuple[str, ...] = ()


@dataclass
class _Shard:
    items: list[AudioItem]
    attempts: int = 0
    done: set[str] = field(default_factory=set)

    def remaining(self) -> list[AudioItem]:
        return [i for i in self.items if i.key not in self.done]


class PipelineWorker:
    """The Ray actor: one pipeline replica (a ``Transcriber`` inside ``LongAudio``)."""

    def __init__(self, spec: PipelineSpec) -> None:
        from asrctl.segment import LongAudio
        from asrctl.transcribe import Transcriber

        if spec.torch_threads:
            import torch

            torch.set_num_threads(spec.torch_threads)

        self.transcriber = Transcriber(
            spec.model_dir,
            engine_options=spec.engine_options,
            device=spec.device,
            cache_dir=spec.cache_dir,
            encoder_dtype=spec.encoder_dtype,
        )
        self.long_audio = LongAudio(self.transcriber, vad=spec.vad)

    def info(self) -> WorkerInfo:
        import ray

        context = ray.get_runtime_context()
        gpus = tuple(str(g) for g in context.get_accelerator_ids().get("GPU", ()))
        node = ray.util.get_node_ip_address()
        return WorkerInfo(os.getpid(), node, self.transcriber.device, gpus)

    def run(
        self, items: list[AudioItem], options: TranscribeOptions
    ) -> Iterator[list[Transcript | Failure]]:
        """Results of ``items``, batch by batch (a Ray streaming generator)."""
        yield from self.long_audio.transcribe(items, options)

    def close(self) -> None:
        self.transcriber.close()


class RayTranscriber:
    """``LongAudio``'s interface over Ray actors (see the module docstring); use as a
    context manager. Starts (or joins) the cluster and the workers when created."""

    def __init__(self, spec: PipelineSpec, cluster: ClusterOptions, *, on_info=None) -> None:
        ray = _import_ray()
        from asrctl.export import prepare

        self.cluster = cluster
        self.say = on_info or log.info
        # set up once, here: the workers then find the export current and only read it
        prepare(spec.model_dir, cache_dir=spec.cache_dir)
        self._started, self._local = _init_ray(ray, cluster)
        try:
            gpus = cluster.gpus_per_worker
            if gpus is None and cluster.engines_per_gpu > 1:
                gpus = 1.0 / cluster.engines_per_gpu
            if gpus is None:
                has_gpus = ray.cluster_resources().get("GPU", 0) > 0 and spec.device != "cpu"
                gpus = spec.engine_options.tensor_parallel_size if has_gpus else 0
            self.gpus_per_worker = gpus
            n = cluster.num_workers or _default_workers(ray, gpus)
            self._check_room(ray, n, gpus)
            self.shared = engines_sharing_a_gpu(gpus)
            if self.shared > 1:
                spec = shared_gpu_spec(spec, self.shared, n if self._local else None)
                self.say(
                    f"{self.shared} engines per GPU, each with gpu_memory_utilization "
                    f"{spec.engine_options.gpu_memory_utilization}; they start one by one"
                )
            self.spec = spec
            actor = ray.remote(PipelineWorker).options(
                num_cpus=cluster.cpus_per_worker,
                num_gpus=gpus,
                max_restarts=cluster.max_restarts,
                max_task_retries=0,  # the driver re-queues what a dead worker did not finish
            )
            self.workers, self.infos = self._start(actor, spec, n, one_by_one=self.shared > 1)
        except BaseException:
            self.close()
            raise

    def _check_room(self, ray: Any, n: int, gpus: float) -> None:
        """Workers the cluster cannot hold would wait for ever: an error on a local
        cluster, a warning on one that may grow (an autoscaler may add nodes)."""
        have = ray.cluster_resources()
        wanted = {"GPU": n * gpus, "CPU": n * self.cluster.cpus_per_worker}
        short = [
            f"{v:g} {k}s (it has {have.get(k, 0):g})"
            for k, v in wanted.items()
            if v > have.get(k, 0)
        ]
        if not short:
            return
        message = f"{n} workers need {' and '.join(short)} of the Ray cluster"
        if self._local:
            raise OptionsError(message, hint="lower --num-workers or --gpus-per-worker")
        self.say(f"warning: {message}; they wait until the cluster has room")

    def _start(
        self, actor: Any, spec: PipelineSpec, n: int, *, one_by_one: bool
    ) -> tuple[list[Any], list[WorkerInfo | None]]:
        """Start ``n`` workers (all at once, or ``one_by_one``: each once the previous one
        has loaded the model); wait for each and report it (pid, node, device)."""
        import ray

        workers: list[Any] = []
        self.workers = workers  # close() stops what started, should a start fail
        pending = [] if one_by_one else [actor.remote(spec) for _ in range(n)]
        infos: list[WorkerInfo | None] = []
        errors: list[str] = []
        for i in range(n):
            w = actor.remote(spec) if one_by_one else pending[i]
            workers.append(w)
            try:
                info = ray.get(w.info.remote())
            except Exception as e:  # the actor's constructor failed (Ray wraps the cause)
                errors.append(_cause(e))
                self.say(f"worker {i} failed to start: {errors[-1]}")
                infos.append(None)
                continue
            gpus = f", GPU {','.join(info.gpus)}" if info.gpus else ""
            self.say(f"worker {i}: pid {info.pid} on node {info.node} ({info.device}{gpus})")
            infos.append(info)
        if all(i is None for i in infos):
            raise AsrctlError(f"no Ray worker could start the pipeline: {errors[0]}")
        return workers, infos

    def close(self) -> None:
        import ray

        for w in getattr(self, "workers", ()):
            ray.kill(w)
        if self._started:
            ray.shutdown()

    def __enter__(self) -> RayTranscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transcribe(
        self, items: Iterable[AudioItem], options: TranscribeOptions
    ) -> Iterator[list[Transcript | Failure]]:
        """Results as workers finish them (completion order), as ``LongAudio`` yields."""
        todo = list(items)
        live = [w for w, info in zip(self.workers, self.infos, strict=True) if info is not None]
        size = self.cluster.shard_size or _shard_size(len(todo), len(live))
        work = _WorkQueue([_Shard(todo[i : i + size]) for i in range(0, len(todo), size)])
        out: queue.Queue = queue.Queue()
        threads = [
            threading.Thread(target=self._drive, args=(i, w, work, options, out), daemon=True)
            for i, w in enumerate(live)
        ]
        for t in threads:
            t.start()
        running = len(threads)
        while running:
            got = out.get()
            if got is None:
                running -= 1
            elif isinstance(got, BaseException):
                raise got
            elif got:
                yield got
        left: list[Transcript | Failure] = list(work.abandon())
        if left:
            yield left

    def _drive(self, index: int, worker, work: _WorkQueue, options, out: queue.Queue) -> None:
        """One thread per worker: shards in, results out, a dead worker's rest re-queued."""
        import ray

        try:
            while (shard := work.take()) is not None:
                try:
                    for ref in worker.run.remote(shard.remaining(), options):
                        batch = ray.get(ref)
                        shard.done.update(r.key for r in batch)
                        out.put(batch)
                except ray.exceptions.RayError as e:
                    if not _worker_lost(e):
                        raise
                    left = len(shard.remaining())
                    self.say(f"worker {index} lost ({_cause(e)}); {left} inputs re-queued")
                    failed = work.retry(shard)
                    if failed:
                        out.put(failed)
                    if _permanently_dead(worker):
                        self.say(f"worker {index} will not restart")
                        return
                    continue
                work.finish()
        except BaseException as e:  # anything else: the run cannot go on
            work.stop()
            out.put(e)  # raised by the consuming thread
        finally:
            work.leave()
            out.put(None)


class _WorkQueue:
    """Shards waiting and in flight, shared by the worker threads."""

    def __init__(self, shards: Sequence[_Shard]) -> None:
        self.pending: deque[_Shard] = deque(shards)
        self.in_flight = 0
        self.stopped = False
        self.cond = threading.Condition()

    def take(self) -> _Shard | None:
        """The next shard; waits while others are in flight (they may come back)."""
        with self.cond:
            while not self.pending and self.in_flight and not self.stopped:
                self.cond.wait()
            if self.stopped or not self.pending:
                return None
            self.in_flight += 1
            return self.pending.popleft()

    def finish(self) -> None:
        with self.cond:
            self.in_flight -= 1
            self.cond.notify_all()

    def retry(self, shard: _Shard) -> list[Failure]:
        """Back in the queue, or (too many attempts) its remaining inputs as failures."""
        from asrctl.results import Failure

        with self.cond:
            self.in_flight -= 1
            shard.attempts += 1
            self.cond.notify_all()
            if shard.attempts < MAX_SHARD_ATTEMPTS:
                self.pending.appendleft(shard)
                return []
        why = f"its Ray worker died {MAX_SHARD_ATTEMPTS} times while transcribing it"
        return [Failure(i.key, f"{i.key}: {why}") for i in shard.remaining()]

    def leave(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def abandon(self) -> list[Failure]:
        """Inputs no worker is left to run, as failures."""
        from asrctl.results import Failure

        with self.cond:
            shards, self.pending = list(self.pending), deque()
        why = "no Ray worker was left to transcribe it"
        return [Failure(i.key, f"{i.key}: {why}") for s in shards for i in s.remaining()]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise OptionsError(
            "--ray and --data-parallel need Ray", hint="pip install 'asrctl[ray]'"
        ) from None
    return ray


def _init_ray(ray: Any, cluster: ClusterOptions) -> tuple[bool, bool]:
    """Join or start the cluster: (whether this process connected, and must disconnect;
    whether it started a new local cluster)."""
    if ray.is_initialized():
        return False, False
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    common = {
        "runtime_env": {"env_vars": env},
        "log_to_driver": bool(os.environ.get("ASRCTL_DEBUG")),  # vLLM logs to stdout
        "configure_logging": False,
    }
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        ray.init(address=address, **common)
        return True, False
    # a new local cluster, wide enough for the workers asked for
    wanted = math.ceil((cluster.num_workers or 1) * cluster.cpus_per_worker)
    ray.init(
        address="local",
        num_cpus=cluster.local_cpus or max(os.cpu_count() or 1, wanted),
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        include_dashboard=False,
        _node_ip_address=LOCAL_IP,  # nothing of a local cluster listens beyond this host
        **common,
    )
    return True, True


def engines_sharing_a_gpu(gpus_per_worker: float) -> int:
    """Workers that share one GPU at ``gpus_per_worker`` GPUs each (1: none share)."""
    if not 0 < gpus_per_worker < 1:
        return 1
    return max(1, math.floor(1 / gpus_per_worker + 1e-9))


def shared_gpu_spec(spec: PipelineSpec, k: int, local_workers: int | None) -> PipelineSpec:
    """``spec`` for one of ``k`` workers sharing a GPU: 1/k of the GPU memory the engines
    of one GPU take together (``gpu_memory_utilization`` if given, else
    :data:`GPU_MEMORY_UTILIZATION`), and on a local cluster of ``local_workers`` workers an
    equal share of this host's cores as torch threads (Ray gives each actor one)."""
    if spec.engine_options.tensor_parallel_size > 1:
        raise OptionsError("several engines per GPU: not with --tensor-parallel-size > 1")
    total = spec.engine_options.gpu_memory_utilization or GPU_MEMORY_UTILIZATION
    share = math.floor(total / k * 1000) / 1000
    engine = replace(spec.engine_options, gpu_memory_utilization=share)
    threads = spec.torch_threads
    if threads is None and local_workers:
        threads = max(1, (os.cpu_count() or 1) // local_workers)
    return replace(spec, engine_options=engine, torch_threads=threads)


def _default_workers(ray: Any, gpus_per_worker: float) -> int:
    if gpus_per_worker <= 0:
        return 1
    return max(1, int(ray.cluster_resources().get("GPU", 0) // gpus_per_worker))


def _shard_size(n_items: int, n_workers: int) -> int:
    return max(1, min(MAX_SHARD_ITEMS, math.ceil(n_items / (SHARDS_PER_WORKER * n_workers))))


def _worker_lost(e: Exception) -> bool:
    import ray

    lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)
    unavailable = getattr(ray.exceptions, "ActorUnavailableError", ())
    return isinstance(e, lost) or (bool(unavailable) and isinstance(e, unavailable))


def _permanently_dead(worker: Any) -> bool:
    """Whether Ray gave up on the actor (restarts used up): a call fails at once."""
    import ray

    try:
        ray.get(worker.info.remote())
    except ray.exceptions.RayError:
        return True
    return False


def _cause(e: BaseException) -> str:
    """The root message of a Ray error (the worker's own exception where there is one)."""
    cause = getattr(e, "cause", None) or e.__cause__
    if isinstance(cause, BaseException) and cause is not e:
        return _cause(cause)
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__
