"""The local runner: the model in this process, on the calling thread; helper threads read
and write files around it.

Helper threads run `restore_file` for a few files at once, so files are decoded and encoded
while the model works; the model itself runs on the thread that called `run`, one image at
a time and in the jobs' order, so Ctrl-C stops it at once.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from dinat_cli import evaluation
from dinat_cli.errors import StorageError
from dinat_cli.results import FileResult
from dinat_cli.runners.base import FILES_IN_FLIGHT, OnFrames, Record, RestoreFn, Runner, restore_file

if TYPE_CHECKING:
    from dinat_cli.engine import Restored, Restorer
    from dinat_cli.options import EngineOptions, ModelSource
    from dinat_cli.planning import Job


class LocalRunner(Runner):
    """Restores with a `Restorer` in this process; `LocalRunner.start` loads one."""

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self.engine = restorer.describe()
        self.ready_note = self.engine.note

    @classmethod
    @contextlib.contextmanager
    def start(cls, source: ModelSource, options: EngineOptions) -> Iterator[LocalRunner]:
        """Load the model as `options` say."""
        from dinat_cli.engine import Restorer

        yield cls(Restorer.load(source, options))

    def _restore(
        self, jobs: Sequence[Job], scoring: evaluation.Scoring | None, record: Record, on_frames: OnFrames | None
    ) -> str | None:
        """The first file that cannot be written for lack of space (or a read-only file system) stops the batch."""
        remaining = iter(enumerate(jobs))
        model = _MainThreadModel(self._restorer.restore)
        helpers = ThreadPoolExecutor(max_workers=FILES_IN_FLIGHT, thread_name_prefix="dinat-file")
        pending: deque[tuple[int, Job, Future[FileResult]]] = deque()
        try:
            while True:
                while len(pending) < FILES_IN_FLIGHT and (item := next(remaining, None)) is not None:
                    index, job = item
                    pending.append((index, job, helpers.submit(model.in_turn, index, job, scoring, on_frames)))
                if not pending:
                    return None
                index, job, future = pending[0]
                model.serve_until(future)
                pending.popleft()
                try:
                    record(index, future.result())
                except StorageError as error:
                    record(index, FileResult.failed(job, str(error)))
                    return str(error)
        finally:
            model.stop()
            # Writes in flight finish (each is atomic): nothing is left half written.
            helpers.shutdown(wait=True, cancel_futures=True)
            for index, job, future in pending:
                if (result := _settled(job, future)) is not None:
                    record(index, result)


def _settled(job: Job, future: Future[FileResult]) -> FileResult | None:
    """What became of a file in flight when the batch stopped; None if it never got its turn."""
    if future.cancelled():
        return None
    error = future.exception()
    if error is None:
        return future.result()
    if isinstance(error, StorageError):
        return FileResult.failed(job, str(error))
    return None


class _Stopped(BaseException):
    """The run was interrupted before this file reached the model: it is not a failure of the file."""


class _MainThreadModel:
    """Runs the model on the main thread for helper threads that read and write files.

    Each file has a turn, its place in the batch, and the model serves the turns in order: a
    file read quickly does not overtake one read slowly, so files finish in the order the
    progress shows them, and none waits behind files that come after it.
    """

    def __init__(self, call: RestoreFn) -> None:
        self._call = call
        self._guard = threading.Lock()
        self._requests: dict[int, tuple[np.ndarray, Future[Restored], bool]] = {}
        # Turns whose file is done without asking for the model (it could not be read).
        self._passed: set[int] = set()
        self._turn = 0
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._stopped = False

    def in_turn(
        self, turn: int, job: Job, scoring: evaluation.Scoring | None, on_frames: OnFrames | None = None
    ) -> FileResult:
        """Called on a helper thread: `restore_file` for `job`, the model serving it in `turn`."""
        # A video asks for the model once a frame, all in its turn: the turn passes when its file is done.
        try:
            return restore_file(job, functools.partial(self._restore, turn, job.video is None), scoring, on_frames)
        finally:
            with self._guard:
                if turn >= self._turn:
                    self._passed.add(turn)
            self._wake.put(None)

    def _restore(self, turn: int, last: bool, pixels: np.ndarray) -> Restored:
        """Waits for the main thread to restore `pixels` in `turn`; `last` passes the turn on."""
        reply: Future[Restored] = Future()
        with self._guard:
            if self._stopped:
                raise _Stopped
            self._requests[turn] = (pixels, reply, last)
        self._wake.put(None)
        return reply.result()

    def serve_until(self, target: Future[FileResult]) -> None:
        """Restore what helpers ask for, turn by turn, until `target` is finished."""
        target.add_done_callback(lambda _: self._wake.put(None))
        while not target.done():
            request = self._next_request()
            if request is None:
                self._wake.get()
                continue
            pixels, reply = request
            try:
                reply.set_result(self._call(pixels))
            except Exception as error:
                reply.set_exception(error)
            except BaseException:
                # Ctrl-C in the middle of the model: the helper gives up on this file.
                reply.set_exception(_Stopped())
                raise

    def _next_request(self) -> tuple[np.ndarray, Future[Restored]] | None:
        """The request of the current turn, skipping turns that passed; None while it has not come."""
        with self._guard:
            while self._turn in self._passed:
                self._passed.remove(self._turn)
                self._turn += 1
            request = self._requests.pop(self._turn, None)
            if request is None:
                return None
            pixels, reply, last = request
            if last:
                self._turn += 1
            return pixels, reply

    def stop(self) -> None:
        """Refuse new requests and release the helpers still waiting."""
        with self._guard:
            self._stopped = True
            waiting = list(self._requests.values())
            self._requests.clear()
        for _, reply, _ in waiting:
            reply.set_exception(_Stopped())
