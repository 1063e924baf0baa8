"""The framework-neutral checkpoint engine behind every ``ShelfCheckpoint`` (SPEC §5).

An adapter turns its framework's hooks into four calls: ``begin`` (fit starts: config, run),
``decide`` (an epoch was checked: improve or not, save or not), ``commit`` (hand over a
snapshot of the state taken in host memory) and ``end`` (wait for the writes, raise their
error). The keep-best rule, the version metadata, retention and the background writer live
here once.
"""

from __future__ import annotations

import atexit
import logging
import math
import queue
import tempfile
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConflictError, InvalidMetadataError, NotFoundError
from ._layout import clean_metadata
from ._refs import validate_alias, validate_name

logger = logging.getLogger("modelshelf")

STATE_FILE = "training-state.ckpt"
_MODES = ("auto", "min", "max")
_SAVES = ("improved", "all")


def keras_like_mode(monitor: str) -> str | None:
    """Names with ``loss`` or ``error`` minimise; accuracy-like names maximise; else unknown."""
    name = monitor.lower()
    if "loss" in name or "error" in name or name.endswith(("mae", "mse", "rmse", "perplexity")):
        return "min"
    maximised = ("acc", "auc", "precision", "recall", "f1", "iou", "dice", "r2", "score", "map")
    if any(token in name for token in maximised):
        return "max"
    return None


def lenient_json(value: Any) -> Any:
    """``value`` as JSON-ready data; what cannot be stored becomes its ``repr`` (for configs
    found by the callbacks, which may hold any object)."""
    if isinstance(value, dict):
        return {str(k): lenient_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [lenient_json(v) for v in value]
    try:
        return clean_metadata({"v": value})["v"]
    except InvalidMetadataError:
        return repr(value)[:200]


@dataclass(frozen=True)
class Decision:
    """What the engine decided at one check."""

    save: bool
    improved: bool
    value: float | None
    best: float | None


_RUNNING_WRITERS: weakref.WeakSet[_Writer] = weakref.WeakSet()


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


class _Writer:
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


@dataclass
class Parts:
    """A snapshot ready to be written: the files of a version and what describes the model.

    ``blobs`` are ready now (``_model._Blob``); each of ``files`` is a function that writes a
    file at the path it is given, called on the writer thread (e.g. serialising the training
    state in the background).
    """

    blobs: dict[str, Any]
    info: dict[str, Any]
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    cleanup: Callable[[], None] | None = None  # called once the write is over (temp files)


class CheckpointEngine:
    """The shared policy of the ShelfCheckpoint callbacks (arguments as in SPEC §5)."""

    def __init__(
        self,
        name: str,
        shelf: Any = None,
        monitor: str | None = None,
        mode: str = "auto",
        min_delta: float = 0.0,
        save: str | None = None,
        every_n_epochs: int = 1,
        keep_last: int | None = None,
        aliases: Any = (),
        config: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        save_weights_only: bool = False,
        resume: bool = False,
        background: bool = True,
        run: Any = None,
        *,
        auto_mode: Callable[[str], str | None] = keras_like_mode,
        state_file: str = STATE_FILE,
    ) -> None:
        self.name = validate_name(name)
        if monitor is not None and not isinstance(monitor, str):
            raise InvalidMetadataError(f"monitor must be a metric name, not {monitor!r}.")
        if mode not in _MODES:
            raise InvalidMetadataError(f"mode={mode!r}: use 'auto', 'min' or 'max'.")
        save = save if save is not None else ("improved" if monitor else "all")
        if save not in _SAVES:
            raise InvalidMetadataError(f"save={save!r}: use 'improved' or 'all'.")
        if save == "improved" and monitor is None:
            raise InvalidMetadataError("save='improved' needs monitor= (the metric to improve).")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise InvalidMetadataError(
                f"every_n_epochs must be an int >= 1, not {every_n_epochs!r}."
            )
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise InvalidMetadataError(f"keep_last must be None or an int >= 1, not {keep_last!r}.")
        if not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise InvalidMetadataError(f"min_delta must be a number >= 0, not {min_delta!r}.")
        self.aliases = [validate_alias(a) for a in aliases if a not in ("latest", "best")]
        self.config = clean_metadata(config, "config")
        self.metadata = clean_metadata(metadata)
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.save, self.every_n_epochs, self.keep_last = save, every_n_epochs, keep_last
        self.save_weights_only, self.resume, self.background = save_weights_only, resume, background
        self._shelf_arg, self.run = shelf, run
        self._auto_mode = auto_mode
        self.state_file = state_file  # the file of a version that resuming needs
        self._owned_run: Any = None
        self.best: float | None = None
        self.best_version: int | None = None
        self.is_writer = True
        self._writer = _Writer()

    # -- the shelf and the run -----------------------------------------------------------
    @property
    def shelf(self) -> Any:
        from ._api import shelf as default_shelf
        from ._shelf import Shelf

        if isinstance(self._shelf_arg, Shelf):
            return self._shelf_arg
        self._shelf_arg = Shelf(self._shelf_arg) if self._shelf_arg is not None else default_shelf()
        return self._shelf_arg

    def update_config(self, config: dict[str, Any]) -> None:
        """Add to the run's config what is known only later (e.g. dataset sizes)."""
        if self.is_writer and self.run is not None:
            self.run.update_config(lenient_json(config))

    def begin(self, config: dict[str, Any], *, is_writer: bool) -> None:
        """Fit starts: open (or adopt) the run and record the config found plus ``config=``."""
        self.is_writer = is_writer
        if not is_writer:
            return
        recorded = {**lenient_json(config), **self.config}
        if self.run is None:
            self._owned_run = self.run = self.shelf.run(job_type="train", config=recorded)
        else:
            self.run.update_config(recorded)

    def end(self, error: BaseException | None = None) -> None:
        """Fit ends: wait for every pending write; raise the first write error, if any."""
        try:
            self._writer.drain()
        finally:
            self._writer.close()
        failure = self._writer.error
        if self._owned_run is not None:
            status_error = error or failure
            if status_error is None:
                self._owned_run._finish("finished")
            else:
                self._owned_run._finish("failed", f"{type(status_error).__name__}: {status_error}")
            self._owned_run = None
            self.run = None
        if failure is not None and error is None:
            raise failure

    @property
    def write_error(self) -> BaseException | None:
        return self._writer.error

    # -- deciding ------------------------------------------------------------------------
    def due(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is one to check."""
        return (epoch + 1) % self.every_n_epochs == 0

    def _resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        assert self.monitor is not None
        mode = self._auto_mode(self.monitor)
        if mode is None:
            raise InvalidMetadataError(
                f"Cannot tell whether {self.monitor!r} should go down or up; pass mode='min' or "
                "mode='max'."
            )
        return mode

    def decide(self, metrics: dict[str, float]) -> Decision:
        """Improve or not, save or not, from the metrics of the epoch just checked."""
        if self.monitor is None:
            return Decision(save=True, improved=False, value=None, best=None)
        if self.monitor not in metrics:
            shown = ", ".join(sorted(metrics)) or "none yet"
            raise NotFoundError(
                f"ShelfCheckpoint(monitor={self.monitor!r}): no such metric was logged. "
                f"Metrics that exist: {shown}."
            )
        value = float(metrics[self.monitor])
        mode = self._resolved_mode()
        if math.isnan(value):
            improved = False  # NaN never improves
        elif self.best is None:
            improved = True
        elif mode == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        best = value if improved else self.best
        return Decision(
            save=improved or self.save == "all", improved=improved, value=value, best=best
        )

    def note(self, decision: Decision) -> None:
        """Adopt a decision (on every rank, before the state is captured: it holds the best)."""
        if decision.improved:
            self.best = decision.value

    def commit(
        self,
        decision: Decision,
        *,
        epoch: int,
        step: int,
        metrics: dict[str, float],
        snapshot: Callable[[], Parts],
    ) -> None:
        """On the writer, take the snapshot now and write it (in the background, maybe)."""
        if not decision.save or not self.is_writer:
            return
        if self._writer.error is not None:
            raise self._writer.error
        parts = snapshot()  # the only part training waits for (plus the write, in the foreground)
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        meta = {
            **self.metadata,
            "epoch": epoch,
            "global_step": step,
            "metrics": {k: v for k, v in clean.items() if math.isfinite(v)},
            "monitor": self.monitor,
            "monitored_value": decision.value
            if decision.value is not None and math.isfinite(decision.value)
            else None,
            "best_so_far": decision.best,
            "improved": decision.improved,
        }
        aliases = [*self.aliases, *(["best"] if decision.improved else [])]

        def write() -> None:

            try:
                version = self._write(parts, meta, aliases)
            finally:
                if parts.cleanup is not None:
                    parts.cleanup()
            if decision.improved:
                self.best_version = version.version
            if self.keep_last is not None and self.shelf.prune(self.name, keep_last=self.keep_last):
                # Free the pruned bytes now, so storage stays bounded. No grace period is
                # needed: writers in flight are protected by the lease/gc handshake.
                self.shelf.gc(grace_period=0)

        if self.background:
            self._writer.submit(write)
        else:
            write()

    def _write(self, parts: Parts, meta: dict[str, Any], aliases: list[str]) -> Any:
        from ._model import _Blob, log_parts

        with tempfile.TemporaryDirectory(prefix="modelshelf-ckpt-") as tmp:
            blobs = dict(parts.blobs)
            for file_name, write_file in parts.files.items():
                path = Path(tmp) / file_name
                write_file(path)
                blobs[file_name] = _Blob(path=path)
            return log_parts(
                self.shelf, self.name, blobs, dict(parts.info), meta, aliases, self.run
            )

    # -- resuming ------------------------------------------------------------------------
    def resume_from(self) -> Any | None:
        """The ``latest`` version to resume from (restoring the best score), or None."""
        try:
            version = self.shelf.get(f"{self.name}:latest")
        except NotFoundError:
            logger.warning(
                "ShelfCheckpoint(resume=True): %r has no version yet; starting fresh.", self.name
            )
            return None
        if self.state_file not in version.files:
            raise ConflictError(
                f"Cannot resume from {version.ref}: it holds the weights only (it was saved with "
                "save_weights_only=True). Resume needs full checkpoints: save_weights_only=False."
            )
        best = version.metadata.get("best_so_far")
        self.best = float(best) if isinstance(best, (int, float)) else None
        return version

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "best_version": self.best_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("monitor") == self.monitor:
            self.best = state.get("best")
            self.best_version = state.get("best_version")
