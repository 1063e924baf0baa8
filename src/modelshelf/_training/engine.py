"""The framework-neutral checkpoint engine behind every ``ShelfCheckpoint``.

An adapter turns its framework's hooks into four calls: ``begin`` (fit starts: config, run),
``check`` (an epoch was checked: improve or not, save or not; ``decide`` and ``note`` when a
distributed adapter must broadcast between them), ``commit`` (hand over a snapshot of the
state taken in host memory) and ``end`` (wait for the writes, raise their error). The
keep-best rule, metric conversion, the version metadata, retention, resuming and the
background writer live here once.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._api import shelf as default_shelf
from .._core.sources import LocalFile
from .._errors import ConflictError, InvalidArgumentError, InvalidMetadataError, NotFoundError
from .._format.names import run_id_of, validate_name
from .._format.records import clean_metadata
from .._models import log_parts
from .._shelf import Shelf
from .options import CheckpointOptions
from .writer import Writer

logger = logging.getLogger("modelshelf")

STATE_FILE = "training-state.ckpt"


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


@dataclass
class Parts:
    """A snapshot ready to be written: the files of a version and what describes the model.

    ``blobs`` are ready now (sources, ``_core.sources``); each of ``files`` is a function that
    writes a file at the path it is given, called on the writer thread (e.g. serialising the
    training state in the background).
    """

    blobs: dict[str, Any]
    info: dict[str, Any]
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    cleanup: Callable[[], None] | None = None  # called once the write is over (temp files)


def scalar_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The values that are single numbers (Python numbers, 0-d or one-element tensors and
    arrays), as floats; everything else is left out."""
    out = {}
    for key, value in values.items():
        if value is None or isinstance(value, (str, bytes)):
            continue
        try:
            out[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


class CheckpointEngine:
    """The shared policy of the ShelfCheckpoint callbacks.

    Args:
        name: the artifact to checkpoint to.
        options: the shared options, checked (``CheckpointOptions``).
        auto_mode: the framework's rule for ``mode="auto"``: a metric name to ``"min"``,
            ``"max"``, or None when it cannot tell.
        state_file: the file of a version that resuming needs.
    """

    def __init__(
        self,
        name: str,
        options: CheckpointOptions,
        *,
        auto_mode: Callable[[str], str | None] = keras_like_mode,
        state_file: str = STATE_FILE,
    ) -> None:
        self.name = validate_name(name)
        self.options = options
        self.aliases: list[str] = list(options.aliases)
        self.config: dict[str, Any] = options.config or {}
        self.metadata: dict[str, Any] = options.metadata or {}
        self.monitor, self.mode, self.min_delta = options.monitor, options.mode, options.min_delta
        self.save = options.save
        self.every_n_epochs, self.keep_last = options.every_n_epochs, options.keep_last
        self.save_weights_only, self.resume = options.save_weights_only, options.resume
        self.background = options.background
        self._shelf_arg, self.run = options.shelf, options.run
        self._auto_mode = auto_mode
        self.state_file = state_file
        self._owned_run: Any = None
        self.best: float | None = None
        self.best_version: int | None = None
        self.is_writer = True
        self._writer = Writer()

    # -- the shelf and the run -----------------------------------------------------------
    @property
    def shelf(self) -> Any:
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
                self._owned_run.finish("finished")
            else:
                self._owned_run.finish("failed", f"{type(status_error).__name__}: {status_error}")
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
            raise InvalidArgumentError(
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

    def check(self, metrics: dict[str, float]) -> Decision:
        """``decide`` and ``note`` at once (a single process decides for itself)."""
        decision = self.decide(metrics)
        self.note(decision)
        return decision

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
        with tempfile.TemporaryDirectory(prefix="modelshelf-ckpt-") as tmp:
            files = dict(parts.blobs)
            for file_name, write_file in parts.files.items():
                path = Path(tmp) / file_name
                write_file(path)
                files[file_name] = LocalFile(path)
            return log_parts(
                self.shelf.repository, self.name, files, dict(parts.info), meta, aliases,
                run_id_of(self.run),
            )  # fmt: skip

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
