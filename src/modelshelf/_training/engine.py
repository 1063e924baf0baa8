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
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._api import shelf as default_shelf
from .._core.gc import gc as collect
from .._core.sources import LocalFile
from .._core.version import ArtifactVersion
from .._errors import (
    ConflictError,
    IntegrityError,
    InvalidArgumentError,
    InvalidMetadataError,
    ModelshelfError,
    NotFoundError,
)
from .._features.resume import ResumePoint, drop_point, points, write_point
from .._format.names import run_id_of, validate_name
from .._format.records import clean_metadata
from .._models import log_parts
from .._shelf import Shelf
from .options import CheckpointOptions, keep_last_for
from .writer import Writer

logger = logging.getLogger("modelshelf")
#: one line per saved version and one at fit start (shown even without logging set up)
progress = logging.getLogger("modelshelf.progress")


class _Console(logging.Handler):
    """Prints the progress lines while the application has set up no logging (Lightning
    does the same for its own messages); once it has, they reach its handlers instead.
    Through ``tqdm.write`` when tqdm is loaded, so that a progress bar stays whole."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # propagated to the application's own handlers
        try:
            message = self.format(record)
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None:
                tqdm.tqdm.write(message, file=sys.stderr)
            else:
                sys.stderr.write(message + "\n")
        except Exception:
            self.handleError(record)


progress.setLevel(logging.INFO)
progress.addHandler(_Console())

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


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool); else None (what a shelf's
    metadata says is checked before it is compared)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


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
        self.every_n_epochs = options.every_n_epochs
        self.keep_last = keep_last_for(options.keep_last, options.monitor)
        self.improve_on = options.improve_on
        self.save_weights_only, self.resume = options.save_weights_only, options.resume
        self.background = options.background
        self._shelf_arg, self.run = options.shelf, options.run
        self._auto_mode = auto_mode
        self.state_file = state_file
        self._owned_run: Any = None
        self.best: float | None = None
        self.best_version: int | None = None
        self._restored = False  # load_state_dict ran before begin (Lightning's ckpt_path)
        self.resumed_point: ResumePoint | None = None
        self._resumed: tuple[Any, float | None] | None = None
        self.phase = 0  # fastai's fine_tune: the how-manieth fit of this callback
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
        restored = (self.best, self.best_version) if self._restored else (None, None)
        self.best = self.best_version = None
        self._restored = False
        self._start_from_artifact()
        self.adopt_best(*restored)
        self._apply_resumed()

    def adopt_best(self, value: float | None, version: int | None) -> None:
        """Take ``value`` (a best score restored from a checkpoint) if it beats the current
        one: the artifact's best may have moved on since that checkpoint, or not."""
        if value is None or self.monitor is None:
            return
        if self.best is None or (
            value < self.best if self._resolved_mode() == "min" else value > self.best
        ):
            self.best, self.best_version = value, version

    # -- what this training is compared against ------------------------------------------
    def _start_from_artifact(self) -> None:
        """Take the artifact's ``best`` as the score to beat (``improve_on="artifact"``) when
        it was chosen on the same monitor and mode; say in one line what this fit is compared
        against."""
        name = self.name
        if self.monitor is None:
            kept = f"the newest {self.keep_last} kept" if self.keep_last else "all kept"
            progress.info(
                "modelshelf: %s: no monitor; every checked epoch is saved (%s).", name, kept
            )
            return
        try:
            mode = self._resolved_mode()
        except InvalidArgumentError:
            return  # the first check says so, after saying whether the metric exists at all
        if self.improve_on == "run":
            progress.info(
                "modelshelf: %s: %s (%s) is compared against this training's own best "
                "(improve_on='run').", name, self.monitor, mode,
            )  # fmt: skip
            return
        found = self._artifact_best()
        if found is None:
            progress.info(
                "modelshelf: %s: no best yet; the first %s (%s) becomes best.",
                name, self.monitor, mode,
            )  # fmt: skip
            return
        version, value, their_monitor, their_mode = found
        if (their_monitor, their_mode) != (self.monitor, mode):
            logger.warning(
                "%s (the current best) was chosen on %r (%s); this training monitors %r (%s), "
                "so it starts fresh: its first checked epoch becomes best.",
                version.ref, their_monitor, their_mode, self.monitor, mode,
            )  # fmt: skip
            return
        self.best, self.best_version = value, version.version
        progress.info(
            "modelshelf: %s: improving on %s (%s=%.4g, %s), the best across trainings.",
            name, version.ref, self.monitor, value, mode,
        )  # fmt: skip

    def _artifact_best(self) -> tuple[Any, float, Any, Any] | None:
        """The artifact's ``best`` with its monitored value, monitor and mode, or None."""
        try:
            version = self.shelf.get(f"{self.name}:best")
        except NotFoundError:
            return None
        meta = version.metadata
        value = finite_number(meta.get("monitored_value"))
        if value is None:
            logger.warning(
                "%s (the current best) records no monitored value; this training starts fresh.",
                version.ref,
            )
            return None
        monitor = meta.get("monitor")
        mode = meta.get("mode")
        if mode is None and isinstance(monitor, str):  # versions saved before "mode" was stored
            mode = self._auto_mode(monitor) if self.mode == "auto" else self.mode
        return version, value, monitor, mode

    def end(self, error: BaseException | None = None) -> None:
        """Fit ends: wait for every pending write; raise the first write error, if any."""
        try:
            self._writer.drain()
        finally:
            self._writer.close()
        failure = self._writer.error
        if self.is_writer and error is None and failure is None and self.run is not None:
            self.finish_points()
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

    def observe(self, metrics: dict[str, float], *, epoch: int, step: int) -> None:
        """Log an epoch's metrics into the run's history (its summary follows), on the
        writer, every epoch, checked or not: runs can be ranked by them."""
        if not self.is_writer or not hasattr(self.run, "log"):
            return
        values = {k: v for k, v in metrics.items() if math.isfinite(v)}
        if not values:
            return
        try:
            self.run.log({**values, "epoch": epoch}, step=step)
        except ModelshelfError as exc:  # a run= that is not live any more: training goes on
            logger.warning("ShelfCheckpoint(%r): could not log metrics: %s", self.name, exc)

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
        if self.monitor is not None and self.monitor not in metrics and self._default_missing():
            self._fall_back_to_no_monitor(metrics)
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

    def _default_missing(self) -> bool:
        return self.options.monitor_defaulted and self.monitor == self.options.monitor

    def _fall_back_to_no_monitor(self, metrics: dict[str, float]) -> None:
        """The framework's default monitor was not logged (e.g. no validation data): save
        every checked epoch instead, storage bounded, rather than fail the training."""
        if self.options.save_given and self.save == "improved":
            return  # save="improved" needs the metric: decide() raises, listing what exists
        self.keep_last = keep_last_for(self.options.keep_last, None)
        kept = f"the newest {self.keep_last} kept" if self.keep_last else "all kept"
        logger.warning(
            "ShelfCheckpoint(%r): the default monitor %r is not logged (metrics: %s); saving "
            "every checked epoch instead (%s). Pass monitor= to choose the metric.",
            self.name, self.monitor, ", ".join(sorted(metrics)) or "none", kept,
        )  # fmt: skip
        self.monitor, self.save = None, "all"

    def note(self, decision: Decision) -> None:
        """Adopt a decision (on every rank, before the state is captured: it holds the best)."""
        if decision.improved:
            self.best = decision.value

    def check(self, metrics: dict[str, float]) -> Decision:
        """``decide`` and ``note`` at once (a single process decides for itself)."""
        decision = self.decide(metrics)
        self.note(decision)
        return decision

    @property
    def keeps_points(self) -> bool:
        """Whether each checked epoch leaves a resume point (full checkpoints only): then
        every snapshot holds the training state."""
        return not self.save_weights_only

    def wants_snapshot(self, decision: Decision) -> bool:
        """Whether the adapter must take a snapshot at this check (a version, or a resume
        point); the same on every rank, as a collective capture needs."""
        return decision.save or self.keeps_points

    def commit(
        self,
        decision: Decision,
        *,
        epoch: int,
        step: int,
        metrics: dict[str, float],
        snapshot: Callable[[], Parts],
    ) -> None:
        """On the writer, take the snapshot now and write it (in the background, maybe): a
        version when the decision says so, and the training's resume point."""
        if not self.wants_snapshot(decision) or not self.is_writer:
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
            "mode": self._resolved_mode() if self.monitor is not None else None,
            "improve_on": self.improve_on,
            "monitored_value": decision.value
            if decision.value is not None and math.isfinite(decision.value)
            else None,
            "best_so_far": decision.best,
            "improved": decision.improved,
        }
        if self.phase:
            meta["phase"] = self.phase
        aliases = [*self.aliases, *(["best"] if decision.improved else [])]
        point_state = {**self.state_dict(), "best": decision.best, "phase": self.phase}

        def write() -> None:
            # mkdtemp, not TemporaryDirectory: its finalizer removes the folder at exit, under
            # a write that is finishing then (fit died; the writer is waited for at exit).
            tmp = tempfile.mkdtemp(prefix="modelshelf-ckpt-")
            try:
                files = dict(parts.blobs)
                for file_name, write_file in parts.files.items():
                    path = Path(tmp) / file_name
                    write_file(path)
                    files[file_name] = LocalFile(path)
                version = None
                if decision.save:
                    version = self._write(files, parts.info, meta, aliases)
                if self.keeps_points:
                    self._write_point(files, parts.info, meta, version, point_state)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                if parts.cleanup is not None:
                    parts.cleanup()
            if version is None:
                return
            if decision.improved:
                self.best_version = version.version
            self._announce(version, meta, decision)
            pruned = (
                []
                if self.keep_last is None
                else self.shelf.prune(self.name, keep_last=self.keep_last)
            )
            if pruned:
                # Free the pruned versions' own bytes now, so storage stays bounded, without a
                # pass over the whole shelf. No grace period is needed: writers in flight are
                # protected by the lease/gc handshake.
                collect(self.shelf.repository, dry_run=False, grace_period=0, only=pruned)

        if self.background:
            self._writer.submit(write)
        else:
            write()

    def _announce(self, version: Any, meta: dict[str, Any], decision: Decision) -> None:
        shown = [f"epoch {meta['epoch']}"]
        if self.monitor is not None:
            value = meta["monitored_value"]
            shown.append(
                f"{self.monitor}={value:.4g}" if value is not None else f"{self.monitor}=nan"
            )
        if decision.improved:
            shown.append("best")
        progress.info("modelshelf: %s saved (%s)", version.ref, ", ".join(shown))

    def _write(
        self, files: dict[str, Any], info: dict[str, Any], meta: dict[str, Any], aliases: list[str]
    ) -> Any:
        return log_parts(
            self.shelf.repository, self.name, files, dict(info), meta, aliases,
            run_id_of(self.run),
        )  # fmt: skip

    def _write_point(
        self,
        files: dict[str, Any],
        info: dict[str, Any],
        meta: dict[str, Any],
        version: Any,
        state: dict[str, Any],
    ) -> None:
        run_id = run_id_of(self.run)
        if run_id is None:
            return
        write_point(
            self.shelf.repository, self.name, run_id,
            epoch=meta["epoch"], global_step=meta["global_step"],
            version=None if version is None else version.version,
            files=files, state=lenient_json(state), model=lenient_json(info),
        )  # fmt: skip

    # -- resuming ------------------------------------------------------------------------
    def resume_from(self) -> Any | None:
        """Where to resume from: the newest resume point of a training that did not finish
        (not one still running), or ``latest`` when that is newer (restoring the best score
        either way); None when there is neither.

        A point of an epoch that was saved as a version resumes from that version.
        """
        repo = self.shelf.repository
        point = self._newest_dead_point(repo)
        latest = None
        try:
            latest = self.shelf.get(f"{self.name}:latest")
        except NotFoundError:
            if point is None:
                logger.warning(
                    "ShelfCheckpoint(resume=True): %r has no version yet; starting fresh.",
                    self.name,
                )
                return None
        if point is not None and point.version is not None:
            try:
                self.shelf.get(f"{self.name}:v{point.version}")
            except NotFoundError:
                logger.warning(
                    "ShelfCheckpoint(resume=True): %s names v%d, which was deleted since; "
                    "resuming from %s instead.",
                    point.ref, point.version, latest.ref if latest else "nothing",
                )  # fmt: skip
                point = None
            if point is None and latest is None:
                return None
        source: Any = latest
        if point is not None and (latest is None or point.time >= latest.created_at):
            self.resumed_point = point
            source = point
            if point.version is not None:
                source = self.shelf.get(f"{self.name}:v{point.version}")
            best = point.state.get("best")
        else:
            best = latest.metadata.get("best_so_far")  # type: ignore[union-attr]
        if self.state_file not in source.files:
            raise ConflictError(
                f"Cannot resume from {source.ref}: it holds the weights only (it was saved with "
                "save_weights_only=True). Resume needs full checkpoints: save_weights_only=False."
            )
        self._resumed = (source, finite_number(best))
        if self.run is not None:  # begin() ran already; else it applies this
            self._apply_resumed()
        return source

    def _apply_resumed(self) -> None:
        """Take the best score of the checkpoint resumed from, and note on the run where it
        resumed from (Keras asks for the source before fit starts, the others after)."""
        if self._resumed is None:
            return
        source, best = self._resumed
        self._resumed = None
        self.adopt_best(best, None)
        self._note_resumed(source)

    @staticmethod
    def describe_source(source: Any) -> tuple[str, str] | None:
        """What another rank needs to open the same resume source (``open_source``)."""
        if source is None:
            return None
        if isinstance(source, ResumePoint):
            return ("point", source.run_id)
        return ("version", source.ref)

    def open_source(self, described: tuple[str, str]) -> Any:
        """The resume source ``describe_source`` described (on a rank that did not choose)."""
        kind, ident = described
        if kind == "version":
            return self.shelf.get(ident)
        for point in points(self.shelf.repository, self.name):
            if point.run_id == ident:
                return point
        raise NotFoundError(f"The resume point of run {ident} of {self.name!r} is gone.")

    def _newest_dead_point(self, repo: Any) -> ResumePoint | None:
        own = run_id_of(self.run)
        for point in reversed(points(repo, self.name)):
            if point.run_id == own:
                continue
            try:
                status = self.shelf.get_run(point.run_id).status
            except (NotFoundError, IntegrityError):
                status = "crashed"  # a point without its run: nobody is writing it
            if status != "running":
                return point
        return None

    def _note_resumed(self, source: Any) -> None:
        """Record on this training's run where it resumed from (lineage: the run it goes on
        from, and the version it started from when there is one)."""
        if not self.is_writer or self.run is None:
            return
        point = self.resumed_point
        resumed: dict[str, Any] = {"epoch": int(source.metadata.get("epoch", -1))}
        if point is not None:
            resumed["run"] = point.run_id
        if isinstance(source, ArtifactVersion):
            resumed["version"] = source.ref
            if point is None:
                run = source.logged_by()
                resumed["run"] = run.id if run is not None else None
            self.run.use(source.ref)
        self.run.update_config({"resumed_from": resumed})

    def finish_points(self) -> None:
        """The training finished: remove its resume point, and the one it resumed from."""
        run_id = run_id_of(self.run)
        repo = self.shelf.repository
        if run_id is not None and self.keeps_points:
            drop_point(repo, self.name, run_id)
        if self.resumed_point is not None:
            drop_point(repo, self.name, self.resumed_point.run_id)
            self.resumed_point = None

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best": self.best, "best_version": self.best_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best, version = state.get("best"), state.get("best_version")
        if state.get("monitor") == self.monitor and isinstance(best, (int, float)):
            self.best, self.best_version = (
                float(best),
                version if isinstance(version, int) else None,
            )
            self._restored = True
