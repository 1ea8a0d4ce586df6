"""The Ray runner: every GPU of a machine, or the machines of a cluster.

The driver (the `dinat` process) plans the jobs, holds the output lock and gathers the
results into the usual summary. Each worker is a Ray actor that loads the model once and
runs `restore_file` on the files it is sent, writing into the shared output folder
with the same atomic writes as a local run. A video of several segments is sent as one
unit per segment (`runners.segments`), so one long clip keeps every worker busy. A worker
that dies loses only the files it had in flight: they are sent again, each alone on a
worker so that a file that kills workers cannot take others down with it, and a file
whose worker died `MAX_ATTEMPTS` times is reported failed. Ray restarts dead workers. A
file that cannot be written because the output's file system is full or read-only stops
the run, as a local one.

Ray is optional (`pip install 'dinat-cli[ray]'`) and imported only when a run asks for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from dinat_cli import evaluation
from dinat_cli.errors import DinatError, StorageError, UsageError
from dinat_cli.output_folder import remove_temporaries_of
from dinat_cli.results import FileResult
from dinat_cli.runners import segments
from dinat_cli.runners.base import FILES_IN_FLIGHT, OnFrames, Record, Runner, restore_file

if TYPE_CHECKING:
    from dinat_cli.engine import EngineDescription, Restored, Restorer
    from dinat_cli.options import EngineOptions, ModelSource
    from dinat_cli.planning import Job

INSTALL = "pip install 'dinat-cli[ray]'"
MAX_ATTEMPTS = 3
# After Ctrl-C: how long to wait for killed workers to be gone before removing their temporary files.
KILL_GRACE_SECONDS = 10.0
# A worker that died is pinged until Ray has restarted it; calls fail for a moment while it
# does, but a worker that fails this many pings in a row is given up.
PING_LIMIT = 20
PING_PAUSE_SECONDS = 0.25


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide a Ray run goes; None fields are chosen from the cluster's resources."""

    address: str | None = None  # None: start or join a local Ray instance
    workers: int | None = None  # None: one per GPU share, or one per machine without GPUs
    gpus_per_worker: float | None = None
    device: str = "auto"  # auto, cpu, cuda, cuda:all or mps

    @classmethod
    def requested(
        cls, *, ray: bool, address: str | None, workers: int | None, gpus_per_worker: float | None, device: str
    ) -> ClusterOptions | None:
        """The Ray run these options ask for, or None for a plain local run."""
        device = device.strip().lower()
        if not (ray or address or workers is not None or gpus_per_worker is not None or device == "cuda:all"):
            return None
        if workers is not None and workers < 1:
            raise UsageError(f"--workers {workers}: expected 1 or more")
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker {gpus_per_worker}: expected a number from 0 (CPU workers) up")
        if device.startswith("cuda:") and device != "cuda:all":
            raise UsageError(f"--device {device}: Ray gives each worker its GPU; use --device cuda or cuda:all")
        if device not in ("auto", "cpu", "cuda", "cuda:all", "mps"):
            raise UsageError(f"--device {device}: expected auto, cpu, cuda, cuda:all or mps with Ray")
        if device in ("cpu", "mps") and gpus_per_worker:
            raise UsageError(f"--gpus-per-worker {gpus_per_worker} does not go with --device {device}")
        if device.startswith("cuda") and gpus_per_worker == 0:
            raise UsageError(f"--device {device} needs --gpus-per-worker above 0")
        if device == "cuda:all" and address is None:
            import torch  # the only check here that needs it

            if not torch.cuda.is_available():
                raise UsageError("--device cuda:all: this machine has no CUDA GPU visible to torch")
        return cls(address, workers, gpus_per_worker, device)


@dataclass
class _Task:
    index: int
    job: Job
    attempts: int = 1


@dataclass
class _Slot:
    """One worker as the driver sees it: the files it holds, whether one is a retry run alone, whether it is back."""

    actor: Any
    in_flight: int = 0
    alone: bool = False
    recovering: bool = False
    failed_pings: int = 0


class _Worker:
    """A Ray actor: loads the model once, then restores the files the driver sends, a few at a time."""

    def __init__(self, source: ModelSource, options: EngineOptions, threads: int) -> None:
        import torch

        from dinat_cli.engine import Restorer
        from dinat_cli.process import configure_process

        # The worker's process is ours: it gets the settings the dinat command makes for itself.
        configure_process()
        torch.set_num_threads(threads)
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self._error: DinatError | None = None
        self._restorer: Restorer | None = None
        try:
            self._restorer = Restorer.load(source, options)
            self._model = _OneAtATime(self._restorer)
        except DinatError as error:
            self._error = error
        except Exception as error:
            # Kept for describe(), so that the driver stops with one line rather than Ray's traceback.
            self._error = DinatError(f"{self._name}: cannot load the model ({type(error).__name__}: {error})")

    def describe(self, must_see: Sequence[Path]) -> dict[str, Any]:
        """What the driver checks before the run: the engine it built, and the paths it cannot see."""
        if self._restorer is None:
            return {"worker": self._name, "error": self._error}
        return {
            "worker": self._name,
            "error": None,
            "blind": [str(path) for path in must_see if not path.exists()],
            "engine": self._restorer.describe(),
        }

    def ping(self) -> str:
        return self._name

    def restore(self, job: Job, scoring: evaluation.Scoring | None) -> FileResult:
        if self._restorer is None:  # restarted on a machine where the model does not load
            result = FileResult.failed(job, str(self._error))
        else:
            result = restore_file(job, self._model, scoring)
        result.worker = self._name
        return result


class _OneAtATime:
    """A worker's model for the files it restores at once (a `video.FrameRestorer`).

    Ray runs up to FILES_IN_FLIGHT calls at once on an actor's threads: files are read and
    written side by side, while the model takes one batch at a time.
    """

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._lock = threading.Lock()

    def restore_batch(self, images: Sequence[Any]) -> list[Restored]:
        with self._lock:
            return self._restorer.restore_batch(images)

    def batch_size(self, height: int, width: int) -> int:
        return self._restorer.batch_size(height, width)


class RayRunner(Runner):
    """Ray workers with the model loaded, ready to restore batches; use `RayRunner.start`."""

    def __init__(self, ray: ModuleType, slots: list[_Slot], engine: EngineDescription, ready_note: str) -> None:
        self._ray = ray
        self._slots = slots
        self.engine = engine
        self.ready_note = ready_note

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, source: ModelSource, options: EngineOptions, cluster: ClusterOptions, *, must_see: Sequence[Path] = ()
    ) -> Iterator[RayRunner]:
        """Connect to Ray, start the workers and wait until each has loaded the model; stop them on exit.

        Every worker gets `source` and `options` as they are, but for the device, which the
        cluster options and the cluster's resources choose. A worker that cannot see one of
        `must_see` stops the start: inputs and outputs must be at the same path everywhere.
        """
        began = time.perf_counter()
        ray = _import_ray()
        _connect(ray, cluster)
        slots: list[_Slot] = []
        try:
            plan = _plan_workers(ray, cluster)
            worker = ray.remote(_Worker).options(
                num_cpus=plan.cpus,
                num_gpus=plan.gpus,
                # Ray restarts a dead worker; the driver, not Ray, sends its files again.
                max_restarts=-1,
                max_task_retries=0,
                max_concurrency=FILES_IN_FLIGHT,
                scheduling_strategy="SPREAD",
                runtime_env=plan.runtime_env,
            )
            options_for_worker = dataclasses.replace(options, device=plan.device)
            for _ in range(plan.workers):
                slots.append(_Slot(worker.remote(source, options_for_worker, plan.threads)))
            described = ray.get([slot.actor.describe.remote(list(must_see)) for slot in slots])
            for info in described:
                if info["error"] is not None:
                    raise info["error"]
                if info["blind"]:
                    raise UsageError(
                        f"Ray worker {info['worker']} cannot see {info['blind'][0]}: inputs and outputs must be "
                        "at the same path on every machine (a shared file system)"
                    )
            machines = len({info["worker"].rsplit(":", 1)[0] for info in described})
            ready_note = (
                f"ray: {plan.workers} worker(s) on {machines} machine(s), {plan.gpus:g} GPU and {plan.cpus:g} CPU "
                f"each, ready in {time.perf_counter() - began:.1f} s"
            )
            # All workers build the same engine: the first one's describes the run.
            yield cls(ray, slots, described[0]["engine"], ready_note)
        finally:
            for slot in slots:
                ray.kill(slot.actor, no_restart=True)
            ray.shutdown()

    def _restore(
        self, jobs: Sequence[Job], scoring: evaluation.Scoring | None, record: Record, on_frames: OnFrames | None
    ) -> str | None:
        """Results come back in the order files finish, on whichever worker took them.

        Workers report whole files and segments: `on_frames` is not called for videos restored on Ray.
        """
        # A long clip's segments go to different workers; its result is recorded once all are back.
        units, owners = segments.split(jobs)
        tasks = deque(_Task(index, unit) for index, unit in enumerate(units))
        run = _Dispatch(self._ray, self._slots, tasks, scoring, segments.Gather(jobs, owners, record).record)
        try:
            run.until_done()
            if run.stopped is not None:
                run.abandon()  # the files in flight cannot be written either
        except KeyboardInterrupt:
            run.abandon()
            raise
        finally:
            # Workers that died mid-write left hidden temporary files; nothing writes those outputs now.
            remove_temporaries_of(run.lost)
        return run.stopped


@dataclass
class _Dispatch:
    """Keeps every worker busy with up to FILES_IN_FLIGHT files, and sends again the files of workers that died."""

    ray: ModuleType
    slots: list[_Slot]
    fresh: deque[_Task]
    scoring: evaluation.Scoring | None
    record: Record
    # Why the run stopped early: a worker found the output's file system full or read-only.
    stopped: str | None = None
    # Jobs whose worker died with them in flight: their temporary files may remain.
    lost: list[Job] = field(default_factory=list)
    _retry: deque[_Task] = field(default_factory=deque)
    _in_flight: dict[Any, tuple[_Slot, _Task]] = field(default_factory=dict)
    _pings: dict[Any, _Slot] = field(default_factory=dict)

    def until_done(self) -> None:
        while (self.fresh or self._retry or self._in_flight) and self.stopped is None:
            self._dispatch()
            waiting = [*self._in_flight, *self._pings]
            if not waiting:
                self._give_up()
                return
            [ref], _ = self.ray.wait(waiting, num_returns=1)
            if ref in self._pings:
                self._pinged(ref)
                continue
            slot, task = self._in_flight.pop(ref)
            slot.in_flight -= 1
            if task.attempts > 1:
                slot.alone = False
            self._collect(slot, ref, task)

    def abandon(self) -> None:
        """Ctrl-C: kill the workers, keep what came back, note the files in flight as lost."""
        refs = list(self._in_flight)
        for slot in self.slots:
            self.ray.kill(slot.actor, no_restart=True)
        if not refs:
            return
        # A killed worker's calls fail once Ray knows the process is gone: then no write is in progress.
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=KILL_GRACE_SECONDS)
        for ref in ready:
            with contextlib.suppress(self.ray.exceptions.RayError):
                self._record(self._in_flight[ref][1], self.ray.get(ref))
        self.lost.extend(task.job for _, task in self._in_flight.values())

    def _dispatch(self) -> None:
        draining = False
        for slot in sorted(self.slots, key=lambda slot: slot.in_flight):
            if slot.alone or slot.recovering:
                continue
            if self._retry and slot.in_flight == 0:
                slot.alone = True
                self._submit(slot, self._retry.popleft())
            elif self._retry and not draining:
                draining = True  # this worker gets nothing new until it is free for a retry
            else:
                while self.fresh and slot.in_flight < FILES_IN_FLIGHT:
                    self._submit(slot, self.fresh.popleft())

    def _submit(self, slot: _Slot, task: _Task) -> None:
        slot.in_flight += 1
        self._in_flight[slot.actor.restore.remote(task.job, self.scoring)] = (slot, task)

    def _collect(self, slot: _Slot, ref: Any, task: _Task) -> None:
        exceptions = self.ray.exceptions
        try:
            result = self.ray.get(ref)
        except exceptions.RayTaskError as error:
            if isinstance(error.cause, StorageError):
                self.stopped = str(error.cause)
                message = self.stopped
            else:  # restore_file returns failures: this is a bug, not a file
                message = _first_line(error)
            result = FileResult.failed(task.job, message)
        except exceptions.RayError as error:
            # The worker (or its machine) died with this file in flight: the output is either
            # complete, or absent with a temporary file beside it.
            self.lost.append(task.job)
            self._recover(slot)
            if task.attempts < MAX_ATTEMPTS:
                task.attempts += 1
                self._retry.append(task)
                return
            message = f"its Ray worker died {task.attempts} times while restoring it ({type(error).__name__})"
            result = FileResult.failed(task.job, message)
        self._record(task, result)

    def _recover(self, slot: _Slot) -> None:
        """Send the worker nothing until a ping shows Ray has restarted it: calls fail meanwhile."""
        if not slot.recovering:
            slot.recovering, slot.failed_pings = True, 0
            self._pings[slot.actor.ping.remote()] = slot

    def _pinged(self, ref: Any) -> None:
        slot = self._pings.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError:
            slot.failed_pings += 1
            if slot.failed_pings >= PING_LIMIT:
                self.slots.remove(slot)
            else:
                time.sleep(PING_PAUSE_SECONDS)
                self._pings[slot.actor.ping.remote()] = slot
            return
        slot.recovering = False

    def _give_up(self) -> None:
        """Every worker is gone for good: the files left fail, none is reported done."""
        for task in [*self._retry, *self.fresh]:
            message = "no Ray worker left to restore it: every worker died and Ray could not restart them"
            self._record(task, FileResult.failed(task.job, message))
        self._retry.clear()
        self.fresh.clear()

    def _record(self, task: _Task, result: FileResult) -> None:
        result.attempts = task.attempts
        self.record(task.index, result)


@dataclass(frozen=True)
class _Plan:
    workers: int
    gpus: float
    cpus: float
    threads: int
    device: str
    runtime_env: dict[str, Any] | None


def _plan_workers(ray: ModuleType, options: ClusterOptions) -> _Plan:
    """How many workers, and what each takes, from the options and the cluster's resources."""
    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if options.gpus_per_worker is not None:
        per_worker = options.gpus_per_worker
    elif options.device.startswith("cuda"):
        per_worker = 1.0
    else:
        per_worker = 1.0 if gpus and options.device == "auto" else 0.0
    if per_worker and not gpus:
        asked = f"--device {options.device}" if options.device.startswith("cuda") else "--gpus-per-worker"
        raise UsageError(f"{asked}: the Ray cluster has no GPU; use --device cpu")
    if options.workers is not None:
        workers = options.workers
    elif per_worker:
        workers = max(1, math.floor(gpus / per_worker + 1e-9))
    else:
        workers = sum(1 for node in ray.nodes() if node.get("Alive"))
    if per_worker * workers > gpus + 1e-9:
        raise UsageError(
            f"--workers {workers} with {per_worker:g} GPU each needs {per_worker * workers:g} GPUs; "
            f"the Ray cluster has {gpus:g}"
        )
    # CPU workers share the cluster's cores (torch threads); GPU workers need about one for decoding.
    share = cpus / workers
    reserve = math.floor(min(share, 1.0) * 10_000) / 10_000
    threads = 1 if per_worker else max(1, math.floor(share))
    device = "cuda" if per_worker else options.device
    # Ray leaves CUDA visible to workers that asked for no GPU: hide it, so `auto` means the CPU (or MPS).
    runtime_env = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}} if gpus and not per_worker else None
    return _Plan(workers, per_worker, reserve, threads, device, runtime_env)


def _import_ray() -> ModuleType:
    # Ray prints cluster events (a worker died, ...) on the driver's stdout, which --json keeps
    # for its document; dinat reports what they mean for the files itself. Read at import.
    os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", ".")
    try:
        import ray
    except ImportError:
        raise UsageError(f"Ray is not installed; for --ray, --ray-address, --workers and cuda:all: {INSTALL}") from None
    return ray


def _connect(ray: ModuleType, options: ClusterOptions) -> None:
    if options.address:
        _probe(options.address)
    try:
        ray.init(
            address=options.address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    except (ConnectionError, ValueError, RuntimeError) as error:
        where = f"--ray-address {options.address}" if options.address else "--ray"
        raise UsageError(f"{where}: cannot start or reach Ray ({_first_line(error)})") from None


def _probe(address: str) -> None:
    """Refuse an address where nothing listens: Ray itself would retry it for ever."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return  # "auto" and the like: Ray finds the cluster itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        raise UsageError(f"--ray-address {address}: no Ray cluster answers there ({error.strerror or error})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
