"""Resume points: where each unfinished training stands, so that a relaunch continues from
its last completed epoch, whatever was saved as a version.

The checkpoint engine writes a point after every checked epoch of a training (one point per
run and artifact, replaced each time) and removes it when that training finishes. A point
names the version of its epoch when one was saved; otherwise it holds the files itself (the
weights and the training state) under ``resume/<name hash>/<run id>/<epoch>/``. A point is not
a version: ``versions``, ``ls``, aliases and gc never see it, and its files are not blobs.

A point is read as untrusted data, like everything on a shelf: its fields are checked, a
damaged point is skipped with a warning, and each file is checked against the size and sha256
the point records while it is downloaded.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.sources import LocalFile, StreamedFile
from .._errors import IntegrityError
from .._format.layout import ResumeKeys
from .._format.manifest import HEX_RE, check_relpath
from .._format.names import is_run_id
from .._format.records import dumps, isoformat, loads, now, parse_time

if TYPE_CHECKING:
    from .._core.repository import Repository

logger = logging.getLogger("modelshelf")

MAX_FILES = 64
MAX_FILE_BYTES = 1 << 40


def keys_for(repo: Repository, name: str) -> ResumeKeys:
    """The resume keys of ``name``, by the folder that holds its versions, so that the points
    of a training follow the artifact through a rename."""
    stored = repo.labels.stored_as(name)
    return ResumeKeys(hashlib.sha256(stored.encode()).hexdigest()[:32])


@dataclass
class ResumePoint:
    """Where one training of ``name`` stood after its last checked epoch."""

    repo: Repository
    name: str
    run_id: str
    epoch: int
    global_step: int
    version: int | None  # the version saved at that epoch, which holds the files
    files: dict[str, tuple[str, int]]  # file name -> (sha256 hex, size), when no version does
    time: _dt.datetime
    state: dict[str, Any]  # the engine's: best, best_version, monitor, mode, phase
    model: dict[str, Any]  # what describes the model (tied weights, ...)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name} (epoch {self.epoch} of run {self.run_id})"

    @property
    def metadata(self) -> dict[str, Any]:
        """What resuming reads, as a version's metadata holds it."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_so_far": self.state.get("best"),
            "model": self.model,
        }

    def path(self, file: str) -> Path:
        """A local copy of one of the point's files, checked against its size and digest."""
        if file not in self.files:
            raise FileNotFoundError(f"{self.ref} holds no file {file!r}")
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="modelshelf-resume-")
        target = Path(self._tmp.name) / file
        if target.exists():
            return target
        hexdigest, size = self.files[file]
        key = keys_for(self.repo, self.name).file(self.run_id, self.epoch, file)
        target.parent.mkdir(parents=True, exist_ok=True)
        sha, written = hashlib.sha256(), 0
        with open(target, "wb") as f:
            for chunk in self.repo.storage.iter_chunks(key):
                written += len(chunk)
                if written > size:
                    break
                sha.update(chunk)
                f.write(chunk)
        if written != size or sha.hexdigest() != hexdigest:
            target.unlink()
            raise IntegrityError(
                f"The resume point {self.ref} has a damaged {file!r} (it does not match the "
                "size and sha256 the point records)."
            )
        return target


def write_point(
    repo: Repository,
    name: str,
    run_id: str,
    *,
    epoch: int,
    global_step: int,
    version: int | None,
    files: dict[str, LocalFile | StreamedFile],
    state: dict[str, Any],
    model: dict[str, Any],
) -> None:
    """Record where training ``run_id`` of ``name`` stands; ``files`` are stored with the
    point unless ``version`` holds them. The point is replaced in one write, after its files
    are stored; the files of the point it replaces are removed afterwards."""
    keys, storage = keys_for(repo, name), repo.storage
    stored: dict[str, dict[str, Any]] = {}
    if version is None:
        for file, source in files.items():
            key = keys.file(run_id, epoch, check_relpath(file))

            def at_key(_hexdigest: str, key: str = key) -> str:
                return key

            if isinstance(source, LocalFile):
                hexdigest = storage.upload(source.path, at_key, None)
                size = source.path.stat().st_size
            else:
                hexdigest, size = storage.put_stream(source.chunks, at_key)
            stored[file] = {"sha256": hexdigest, "size": size}
    record = {
        "name": repo.labels.stored_as(name),  # the same after a rename
        "run_id": run_id,
        "epoch": epoch,
        "global_step": global_step,
        "version": version,
        "files": stored,
        "time": isoformat(now()),
        "state": state,
        "model": model,
    }
    storage.replace(keys.point(run_id), dumps(record))
    current = f"{keys.files(run_id)}/{epoch}/"
    storage.delete_many(k for k in storage.find(keys.files(run_id)) if not k.startswith(current))


def drop_point(repo: Repository, name: str, run_id: str) -> None:
    """Remove the point of training ``run_id`` of ``name`` and its files (if any)."""
    keys = keys_for(repo, name)
    repo.storage.delete(keys.point(run_id))
    repo.storage.delete_many(repo.storage.find(keys.files(run_id)))


def points(repo: Repository, name: str) -> list[ResumePoint]:
    """The readable resume points of ``name``, oldest first; a damaged one is skipped with a
    warning (it is never trusted)."""
    keys = keys_for(repo, name)
    found = []
    for entry in repo.storage.listdir(keys.folder):
        run_id = entry.removesuffix(".json")
        if not entry.endswith(".json") or not is_run_id(run_id):
            continue
        key = keys.point(run_id)
        data = repo.storage.try_read(key)
        if data is None:
            continue
        try:
            found.append(_parse(repo, name, run_id, loads(data, key), key))
        except IntegrityError as exc:
            logger.warning("Skipping a resume point that cannot be used: %s", exc)
    return sorted(found, key=lambda p: p.time)


def _parse(
    repo: Repository, name: str, run_id: str, record: dict[str, Any], where: str
) -> ResumePoint:
    def bad(what: str) -> IntegrityError:
        return IntegrityError(f"The resume point {where} has {what}.")

    def number(value: Any, what: str, *, none: bool = False) -> Any:
        if none and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 62:
            raise bad(f"an odd {what} ({str(value)[:40]!r})")
        return value

    if record.get("name") != repo.labels.stored_as(name) or record.get("run_id") != run_id:
        raise bad("a name or run id other than its key's")
    files = record.get("files")
    if not isinstance(files, dict) or len(files) > MAX_FILES:
        raise bad("an odd list of files")
    checked: dict[str, tuple[str, int]] = {}
    for file, entry in files.items():
        try:
            check_relpath(file)
        except Exception:
            raise bad(f"an unsafe file name {str(file)[:60]!r}") from None
        hexdigest = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(hexdigest, str) or not HEX_RE.fullmatch(hexdigest):
            raise bad(f"a malformed digest for {file!r}")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES:
            raise bad(f"an odd size for {file!r}")
        checked[file] = (hexdigest, size)
    state, model = record.get("state"), record.get("model")
    if not isinstance(state, dict) or not isinstance(model, dict):
        raise bad("no engine state or model description")
    try:
        when = parse_time(record["time"])
    except (KeyError, TypeError, ValueError):
        raise bad("no readable time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    version = number(record.get("version"), "version", none=True)
    if version is None and not checked:
        raise bad("neither a version nor files")
    return ResumePoint(
        repo=repo,
        name=name,
        run_id=run_id,
        epoch=number(record.get("epoch"), "epoch"),
        global_step=number(record.get("global_step"), "global step"),
        version=version,
        files=checked,
        time=when,
        state=state,
        model=model,
    )
