"""The local runner: the model in this process, on the calling thread; helper threads read
and write files around it.

Helper threads run `restore_file` for a few files at once, so files are decoded and encoded
while the model works; the model itself runs on the thread that called `run`, in the jobs'
order, so Ctrl-C stops it at once. Images of one size that are waiting for it together go
through it together, up to the engine's batch size (`Restorer.batch_size`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dinat_cli import evaluation
from dinat_cli.errors import StorageError
from dinat_cli.results import FileResult
from dinat_cli.runners.base import FILES_IN_FLIGHT, OnFrames, Record, Runner, restore_file

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
        model = _MainThreadModel(self._restorer)
        # A whole batch waiting for the model, one file being read and one being written.
        in_flight = max(FILES_IN_FLIGHT, self._restorer.largest_batch + 2)
        helpers = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="dinat-file")
        pending: deque[tuple[int, Job, Future[FileResult]]] = deque()
        try:
            while True:
                while len(pending) < in_flight and (item := next(remaining, None)) is not None:
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
    progress shows them, and none waits behind files that come after it. Images of the
    following turns that are already waiting, of the current one's size, join its batch.
    """

    def __init__(self, restorer: Restorer) -> None:
        self._restorer = restorer
        self._guard = threading.Lock()
        self._requests: dict[int, _Request] = {}
        # Turns whose file is done without asking for the model (it could not be read).
        self._passed: set[int] = set()
        self._turn = 0
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._stopped = False

    def in_turn(
        self, turn: int, job: Job, scoring: evaluation.Scoring | None, on_frames: OnFrames | None = None
    ) -> FileResult:
        """Called on a helper thread: `restore_file` for `job`, the model serving it in `turn`."""
        # A video asks for the model once a batch of frames, all in its turn: the turn passes when its file is done.
        try:
            return restore_file(job, _Turn(self, turn, passes_on=job.video is None), scoring, on_frames)
        finally:
            with self._guard:
                if turn >= self._turn:
                    self._passed.add(turn)
            self._wake.put(None)

    def request(self, turn: int, last: bool, images: list[np.ndarray]) -> list[Restored]:
        """Waits for the main thread to restore `images` in `turn`; `last` passes the turn on."""
        reply: Future[list[Restored]] = Future()
        with self._guard:
            if self._stopped:
                raise _Stopped
            self._requests[turn] = _Request(images, reply, last)
        self._wake.put(None)
        return reply.result()

    def batch_size(self, height: int, width: int) -> int:
        return self._restorer.batch_size(height, width)

    def serve_until(self, target: Future[FileResult]) -> None:
        """Restore what helpers ask for, turn by turn, until `target` is finished."""
        target.add_done_callback(lambda _: self._wake.put(None))
        while not target.done():
            requests = self._next_requests()
            if not requests:
                self._wake.get()
                continue
            try:
                self._answer(requests)
            except BaseException:
                # Ctrl-C in the middle of the model: the helpers give up on these files.
                for request in requests:
                    if not request.reply.done():
                        request.reply.set_exception(_Stopped())
                raise

    def _answer(self, requests: list[_Request]) -> None:
        """Restore the requests' images together; where that fails, each alone, so that only files at fault fail."""
        try:
            results = self._restorer.restore_batch([image for request in requests for image in request.images])
        except Exception as error:
            if len(requests) == 1:
                requests[0].reply.set_exception(error)
            else:
                for request in requests:
                    self._answer([request])
            return
        for request in requests:
            request.reply.set_result(results[: len(request.images)])
            results = results[len(request.images) :]

    def _next_requests(self) -> list[_Request]:
        """The request of the current turn, and those of the next turns that can join its batch.

        Turns that passed are skipped; empty while the current turn's request has not come.
        """
        with self._guard:
            gathered: list[_Request] = []
            limit = 1
            while len(gathered) < limit:
                while self._turn in self._passed:
                    self._passed.remove(self._turn)
                    self._turn += 1
                request = self._requests.get(self._turn)
                if request is None:
                    break
                if gathered and (not request.last or request.images[0].shape != gathered[0].images[0].shape):
                    break
                del self._requests[self._turn]
                gathered.append(request)
                if not request.last:  # a video's frames: its next batch is asked for once these are answered
                    break
                self._turn += 1
                if len(gathered) == 1 and self._restorer.largest_batch > 1:
                    limit = self._restorer.batch_size(*request.images[0].shape[:2])
            return gathered

    def stop(self) -> None:
        """Refuse new requests and release the helpers still waiting."""
        with self._guard:
            self._stopped = True
            waiting = list(self._requests.values())
            self._requests.clear()
        for request in waiting:
            request.reply.set_exception(_Stopped())


@dataclass(frozen=True)
class _Request:
    """Images one file's helper thread waits to have restored: a photo's, or a batch of a clip's frames."""

    images: list[np.ndarray]
    reply: Future[list[Restored]]
    last: bool  # the file's last request: its turn passes on when it is answered


@dataclass(frozen=True)
class _Turn:
    """The model as one file's work sees it (a `video.FrameRestorer`), served in the file's turn.

    A photo's one request passes the turn on; a clip keeps it until its file is done.
    """

    model: _MainThreadModel
    turn: int
    passes_on: bool

    def restore_batch(self, images: Sequence[np.ndarray]) -> list[Restored]:
        return self.model.request(self.turn, self.passes_on, list(images))

    def batch_size(self, height: int, width: int) -> int:
        return self.model.batch_size(height, width)
