"""Runs: what a training or evaluation job did, and the lineage edges it leaves.

Layout under ``runs/<run id>/`` (see docs/format.md)::

    run.json             written once at start: name, job type, project, host, pid, Python,
                         packages, command line, git commit and dirty flag, start time
    config.json          the run's config (rewritten by its one writer when it changes)
    summary.json         the last value of each metric, and what the user put in run.summary
    heartbeat            rewritten every HEARTBEAT_SECONDS while the run is alive
    history/<k>.json     metric history, appended in batches (a log of numbered records)
    inputs/<k>.json      versions the run used   (a log)
    outputs/<k>.json     versions the run logged (a log)
    end.json             written once at the end: status, end time, error

A run with no ``end.json`` is ``running`` while its process lives (same host: the pid and its
start time are checked; another host: the heartbeat is younger than STALE_SECONDS) and
``crashed`` otherwise.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import logging
import math
import os
import platform
import secrets
import socket
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .._errors import (
    ConflictError,
    IntegrityError,
    InvalidArgumentError,
    InvalidMetadataError,
    NotFoundError,
)
from .._format.layout import RUNS, RunKeys
from .._format.names import RUN_ID_RULE, is_run_id, run_id_of, validate_name
from .._format.records import (
    RunEnd,
    UnreadableRecord,
    clean_metadata,
    dumps,
    isoformat,
    loads,
    now,
    parse_beat,
    parse_time,
)
from .._format.seqlog import SeqLog

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion
    from .._storage import Storage

logger = logging.getLogger("modelshelf")

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 150.0
FLUSH_SECONDS = 10.0
_PACKAGES = (
    "modelshelf", "numpy", "torch", "pytorch-lightning", "lightning", "keras", "tensorflow",
    "tensorflow-cpu", "fastai", "scikit-learn", "safetensors", "fsspec", "s3fs",
)  # fmt: skip


def new_run_id() -> str:
    """Sortable by start time, unique across machines: ``20261127-232700-3f9a1c``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a live process from a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    current = _process_start(pid)
    if current is None:  # no /proc: trust kill(0)
        return True
    return start is None or current == start


def _git() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=5, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status), "root": git("rev-parse", "--show-toplevel")}


def _packages() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def environment() -> dict[str, Any]:
    """What a run records about where it ran."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start": _process_start(os.getpid()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": _packages(),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "git": _git(),
    }


def _checked(record: dict[str, Any], run_id: str, where: str) -> dict[str, Any]:
    """A run record read from the shelf, checked for the shapes readers use."""

    def bad(what: str) -> IntegrityError:
        return IntegrityError(
            f"The run record {where} {what}; the shelf was edited by hand or tampered with."
        )

    if record.get("id") != run_id:
        raise bad(f"names the run {record.get('id')!r:.80}, not {run_id!r}")
    for key in ("name", "project"):
        if not isinstance(record.get(key), (str, type(None))):
            raise bad(f"has a {key} that is not a string")
    if not isinstance(record.get("job_type", "train"), str):
        raise bad("has a job_type that is not a string")
    for key in ("config", "environment"):
        if not isinstance(record.get(key, {}), dict):
            raise bad(f"has a {key} that is not an object")
    try:
        parse_time(record["started_at"])
    except (KeyError, TypeError, ValueError):
        raise bad("has no valid started_at time") from None
    return record


class Run:
    """One job (training, evaluation, ...): its config, metrics, inputs and outputs.

    Start one with ``with shelf.run(...) as run:``; read one with ``shelf.get_run(id)``.
    """

    def __init__(self, repo: Repository, record: dict[str, Any], *, live: bool = False) -> None:
        self._repo = repo
        self._record = record
        self.id: str = record["id"]
        self.name: str | None = record.get("name")
        self.job_type: str = record.get("job_type", "train")
        self.project: str | None = record.get("project")
        self.started_at: _dt.datetime = parse_time(record["started_at"])
        self.config: dict[str, Any] = dict(record.get("config", {}))
        self.summary: dict[str, Any] = {}
        self._live = live
        self._end: dict[str, Any] | None = None
        self._buffer: list[dict[str, Any]] = []
        self._next_step = 0
        self._last_flush = time.monotonic()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Run {self.id} job_type={self.job_type!r} status={self.status!r}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Run):
            return NotImplemented
        return (self._repo.url, self.id) == (other._repo.url, other.id)

    def __hash__(self) -> int:
        return hash((self._repo.url, self.id))

    @property
    def _storage(self) -> Storage:
        return self._repo.storage

    @property
    def _keys(self) -> RunKeys:
        return RunKeys(self.id)

    @property
    def shelf(self) -> Any:
        """The ``Shelf`` this run is on."""
        return self._repo.facade

    @property
    def environment(self) -> dict[str, Any]:
        """Host, pid, Python and package versions, command line, git commit and dirty flag."""
        return dict(self._record.get("environment", {}))

    @property
    def ended_at(self) -> _dt.datetime | None:
        end = self._read_end()
        return parse_time(end["ended_at"]) if end else None

    # -- status --------------------------------------------------------------------------
    def _read_end(self) -> dict[str, Any] | None:
        if self._end is None:
            data = self._storage.try_read(self._keys.end)
            try:
                self._end = loads(data, self.id) if data else None
            except UnreadableRecord:
                self._end = None  # being written, or torn by a crash: not ended (yet)
        return self._end

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``failed`` or ``crashed`` (died without finishing)."""
        end = self._read_end()
        if end is not None:
            return str(end["status"])
        if self._live:
            return "running"
        env = self._record.get("environment", {})
        pid = env.get("pid")
        if env.get("host") == socket.gethostname() and isinstance(pid, int) and pid > 0:
            return "running" if _alive(pid, env.get("pid_start")) else "crashed"
        beat = self._storage.try_read(self._keys.heartbeat)
        last = parse_beat(beat) or self.started_at
        age = (now() - last).total_seconds()
        return "running" if age < STALE_SECONDS else "crashed"

    @property
    def error(self) -> str | None:
        end = self._read_end()
        return end.get("error") if end else None

    # -- writing (the run's own process) ------------------------------------------------
    def _start(self) -> None:
        self._storage.create(self._keys.record, dumps(self._record))
        self._write_config()
        self._storage.replace(self._keys.heartbeat, isoformat(now()).encode(), durable=False)
        self._beat = threading.Thread(
            target=self._heartbeat, name="modelshelf-heartbeat", daemon=True
        )
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):
                self._storage.replace(
                    self._keys.heartbeat, isoformat(now()).encode(), durable=False
                )
                self.flush()

    def _require_live(self, what: str) -> None:
        if not self._live:
            raise ConflictError(
                f"Cannot {what}: run {self.id} is {self.status}; only the process that runs it "
                "inside `with shelf.run(...)` can change it."
            )

    def _write_config(self) -> None:
        self._storage.replace(self._keys.config, dumps(self.config), durable=False)

    def update_config(self, config: dict[str, Any]) -> None:
        """Merge ``config`` into the run's config (callbacks record what they find this way)."""
        self._require_live("update the config")
        self.config.update(clean_metadata(config, "config"))
        self._write_config()

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record metric values (numbers) at ``step``; the last value of each goes to summary."""
        self._require_live("log metrics")
        clean = clean_metadata(metrics, "metrics") if metrics else {}
        for key, value in clean.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidMetadataError(
                    f"Metric {key!r} = {value!r} is not a number; put other values in "
                    "run.summary or run.config.",
                    value=value,
                )
        with self._lock:
            if step is None:
                step = self._next_step
            self._next_step = int(step) + 1
            self._buffer.append({"step": int(step), "at": isoformat(now()), **clean})
            self.summary.update(clean)
            if time.monotonic() - self._last_flush > FLUSH_SECONDS or len(self._buffer) >= 500:
                self.flush()

    def latest_metrics(self) -> dict[str, float]:
        """The latest value of each number in the summary (logged or set), as floats."""
        with self._lock:
            summary = dict(self.summary)
        return {
            k: float(v)
            for k, v in summary.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not _nan(v)
        }

    def flush(self) -> None:
        """Write buffered metrics and the summary to the shelf."""
        with self._lock:
            if self._buffer:
                rows = self._buffer
                history = SeqLog(self._storage, self._keys.history, lists=False)  # long: a hint
                history.append(lambda _n, _h: {"rows": rows})
                self._buffer = []
            summary = clean_metadata(
                {k: v for k, v in self.summary.items() if not _nan(v)}, "summary"
            )
            self._storage.replace(self._keys.summary, dumps(summary), durable=False)
            self._last_flush = time.monotonic()

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """End the run as ``finished`` or ``failed`` (``with shelf.run()`` does this itself)."""
        self._require_live("finish it")
        if status not in ("finished", "failed"):
            raise InvalidArgumentError(f"status={status!r}: use 'finished' or 'failed'.")
        self._stop.set()
        try:
            self.flush()
        finally:
            end: RunEnd = {"status": status, "ended_at": isoformat(now()), "error": error}
            self._storage.create(self._keys.end, dumps(end))
            self._end = dict(end)
            self._live = False

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.finish("finished")
        else:
            self.finish("failed", f"{exc_type.__name__ if exc_type else 'Error'}: {exc}")

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        repo: Repository,
        name: str | None,
        job_type: str,
        config: dict[str, Any] | None,
        project: str | None,
    ) -> Run:
        """Start a new run on ``repo``, recorded at once (see ``Shelf.run``)."""
        if name is not None and not isinstance(name, str):
            raise InvalidMetadataError(f"A run name is a string, not {name!r}.", value=name)
        if project is not None:
            validate_name(project)
        if not isinstance(job_type, str) or not job_type:
            raise InvalidArgumentError(f"job_type must be a non-empty string, not {job_type!r}.")
        record = {
            "id": new_run_id(),
            "name": name,
            "job_type": job_type,
            "project": project,
            "config": clean_metadata(config, "config"),
            "started_at": isoformat(now()),
            "environment": environment(),
        }
        repo.info(create=True)
        run = cls(repo, record, live=True)
        run._start()
        return run

    @classmethod
    def load(cls, repo: Repository, run_id: str) -> Run:
        """The run ``run_id`` of ``repo``; NotFoundError listing recent runs."""
        if not is_run_id(run_id):
            raise NotFoundError(
                f"Invalid run id {run_id!r:.140}: {RUN_ID_RULE}.", ref=str(run_id)[:140]
            )
        data = repo.storage.try_read(RunKeys(run_id).record)
        if data is None:
            recent = [r.id for r in cls.load_all(repo)[-5:]]
            raise NotFoundError(
                f"No run {run_id!r} on {repo.url}. Recent runs: {', '.join(recent) or 'none'}.",
                ref=run_id,
            )
        where = repo.storage.describe(RunKeys(run_id).record)
        run = cls(repo, _checked(loads(data, where), run_id, where))
        run._load_summary()
        return run

    @classmethod
    def load_all(
        cls,
        repo: Repository,
        job_type: str | None = None,
        status: str | None = None,
        project: str | None = None,
    ) -> list[Run]:
        """The runs of ``repo``, oldest first, optionally filtered."""
        ids = repo.storage.listdir(RUNS)
        keys = {i: RunKeys(i).record for i in ids}
        got = repo.storage.read_many(list(keys.values()))
        runs = []
        for i, key in keys.items():
            data = got.get(key)
            if data is None:
                continue
            try:
                run = cls(repo, _checked(loads(data, key), i, repo.storage.describe(key)))
            except UnreadableRecord as exc:  # being written, or torn by a crash
                logger.debug("%s", exc)
                continue
            if job_type is not None and run.job_type != job_type:
                continue
            if project is not None and run.project != project:
                continue
            if status is not None and run.status != status:
                continue
            run._load_summary()
            runs.append(run)
        return sorted(runs, key=lambda r: (r.started_at, r.id))

    # -- reading -------------------------------------------------------------------------
    def history(self) -> list[dict[str, Any]]:
        """Every logged metric row (``step``, ``at`` and the values), in order."""
        rows = []
        for _n, record in SeqLog(self._storage, self._keys.history).all():
            rows.extend(record.get("rows", []))
        with self._lock:
            return rows + list(self._buffer)

    def _load_summary(self) -> None:
        data = self._storage.try_read(self._keys.summary)
        if data:
            self.summary = loads(data, self.id)
        data = self._storage.try_read(self._keys.config)
        if data:
            self.config = loads(data, self.id)

    # -- lineage -------------------------------------------------------------------------
    def use(self, ref: str) -> ArtifactVersion:
        """Resolve ``ref`` and record it as an input of this run."""
        self._require_live("record an input")
        version = self._repo.get(ref)
        self._repo.record_edge(self.id, "inputs", version.name, version.version)
        return version

    def log_artifact(self, *args: Any, **kwargs: Any) -> ArtifactVersion:
        """``shelf.log_artifact(..., run=this run)``: the version becomes an output."""
        self._require_live("log an artifact")
        kwargs["run"] = self
        version: ArtifactVersion = self.shelf.log_artifact(*args, **kwargs)
        return version

    def log_model(self, *args: Any, **kwargs: Any) -> ArtifactVersion:
        """``shelf.log_model(..., run=this run)``: the model version becomes an output."""
        self._require_live("log a model")
        kwargs["run"] = self
        version: ArtifactVersion = self.shelf.log_model(*args, **kwargs)
        return version

    def _edges(self, kind: str) -> list[ArtifactVersion]:
        out = []
        seen = set()
        for _n, edge in SeqLog(self._storage, self._keys.edges(kind)).all():
            key = (edge["name"], edge["version"])
            if key in seen:
                continue
            seen.add(key)
            with contextlib.suppress(NotFoundError):
                ref = f"{edge['name']}:v{edge['version']}"
                out.append(self._repo.get(ref, follow_renames=True))
        return out

    def inputs(self) -> list[ArtifactVersion]:
        """The versions this run used (deleted ones left out), in the order it used them."""
        return self._edges("inputs")

    def outputs(self) -> list[ArtifactVersion]:
        """The versions this run logged (deleted ones left out), in order."""
        return self._edges("outputs")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "job_type": self.job_type,
            "project": self.project,
            "status": self.status,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "config": self.config,
            "summary": self.summary,
            "environment": self.environment,
            "error": self.error,
        }


def _nan(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def metrics_at_commit(repo: Repository, run: Any) -> dict[str, float]:
    """The latest value of each number ``run`` has logged, now: what a version that the run
    logs without ``metadata["metrics"]`` records as its own metrics (never the run's final
    summary, which a later version may have moved)."""
    if run is None:
        return {}
    found: Run = run if isinstance(run, Run) else None  # type: ignore[assignment]
    if found is None:
        try:
            found = Run.load(repo, run_id_of(run) or "")
        except (NotFoundError, IntegrityError):
            return {}
    return found.latest_metrics()


def order_runs(runs: list[Run], order_by: str | None, descending: bool) -> list[Run]:
    """``runs`` sorted by the summary metric ``order_by`` (runs without it last, either way);
    by start time without one."""
    if order_by is None:
        return sorted(runs, key=lambda r: (r.started_at, r.id), reverse=descending)

    values = {r.id: r.latest_metrics().get(order_by) for r in runs}
    scored = [r for r in runs if values[r.id] is not None]
    missing = [r for r in runs if values[r.id] is None]
    scored.sort(key=lambda r: (values[r.id], r.started_at), reverse=descending)
    return scored + missing
