"""The background writer of the checkpoint engine: one thread, versions in order, never one
dropped, and the first error kept for ``fit`` to raise."""

from __future__ import annotations

import atexit
import queue
import tempfile
import threading
import weakref
from collections.abc import Callable

_RUNNING_WRITERS: weakref.WeakSet[Writer] = weakref.WeakSet()


@atexit.register
def _finish_pending_writes() -> None:
    """At interpreter exit, finish the versions still being written.

    Keras and fastai call no hook when ``fit`` dies of an exception, so the callback cannot
    wait for its writer then; the writer thread is a daemon (it must not keep a notebook's
    kernel alive), and daemon threads are stopped at exit. atexit runs while they still
    live: the last checkpoints before the failure are committed rather than lost.
    """
    for writer in list(_RUNNING_WRITERS):
        writer.close()


class Writer:
    """One background thread that logs versions in order; never drops one.

    ``submit`` blocks while a write is still pending (so at most two snapshots are in host
    memory); the first error is kept, later jobs are skipped, and ``drain`` raises it.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=1)
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        if self._thread is None:
            # Training loops fork while this thread runs (a DataLoader's workers, each epoch).
            # A child forked while this thread held tempfile's first-use lock would hang at
            # its own first tempfile call (multiprocessing makes one), so that lock is taken
            # and released here, once, before the thread exists.
            tempfile.TemporaryDirectory(prefix="modelshelf-").cleanup()
            self._thread = threading.Thread(
                target=self._loop, name="modelshelf-writer", daemon=True
            )
            self._thread.start()
            _RUNNING_WRITERS.add(self)
        self._queue.put(job)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    job()
            except BaseException as exc:  # surfaced from fit by drain()
                self.error = exc
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Let the pending jobs finish, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            _RUNNING_WRITERS.discard(self)
