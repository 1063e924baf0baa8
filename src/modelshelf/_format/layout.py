"""Every key of a shelf and every path of the local download cache, in one place.

This module mirrors docs/format.md: nothing else builds a key with an f-string. Shelf keys
are relative to the shelf root; a name, version number, run id or digest is checked by the
caller (``names``, ``manifest``) before it gets here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT_RECORD = "modelshelf.json"
ARTIFACTS = "artifacts"
BLOBS = "blobs"
MANIFESTS = "manifests"
LEASES = "leases"
RUNS = "runs"
TMP = "tmp"
GC = "gc"
RESUME = "resume"
#: The project folder of names without a project; ``_`` cannot start a project name.
NO_PROJECT = "_"


# -- logs of numbered records (see seqlog) ---------------------------------------------------
def record_key(prefix: str, n: int) -> str:
    return f"{prefix}/{n:012d}.json"


def record_number(key: str) -> int | None:
    """The number of a log record's key, or None for anything else (a HEAD hint, ...)."""
    base = key.rsplit("/", 1)[-1]
    stem = base.removesuffix(".json")
    return int(stem) if base.endswith(".json") and stem.isdigit() else None


def head_key(prefix: str) -> str:
    return f"{prefix}/HEAD"


# -- content ---------------------------------------------------------------------------------
def blob_key(hexdigest: str) -> str:
    return f"{BLOBS}/sha256/{hexdigest[:2]}/{hexdigest}"


def manifest_key(hexdigest: str) -> str:
    return f"{MANIFESTS}/sha256/{hexdigest[:2]}/{hexdigest}.json"


def manifest_hex(key: str) -> str:
    return key.rsplit("/", 1)[-1].removesuffix(".json")


def lease_key(lease_id: str) -> str:
    return f"{LEASES}/{lease_id}.json"


# -- resume points -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ResumeKeys:
    """The resume points of one artifact, one per training (run) that has not finished::

        resume/<name hash>/<run id>.json               the point (sealed record)
        resume/<name hash>/<run id>/<epoch>/<file>     its files, when no version holds them

    ``name_hash`` is the first 32 hex digits of the sha256 of the artifact's name (a name may
    hold ``/``)."""

    name_hash: str

    @property
    def folder(self) -> str:
        return f"{RESUME}/{self.name_hash}"

    def point(self, run_id: str) -> str:
        return f"{self.folder}/{run_id}.json"

    def files(self, run_id: str) -> str:
        return f"{self.folder}/{run_id}"

    def file(self, run_id: str, epoch: int, name: str) -> str:
        return f"{self.folder}/{run_id}/{epoch}/{name}"


# -- gc ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GcKeys:
    """The records of gc pass ``k``: started (a log record), heartbeat, done."""

    k: int

    @property
    def beat(self) -> str:
        return f"{GC}/{self.k:012d}.beat"

    @property
    def done(self) -> str:
        return f"{GC}/{self.k:012d}.done"


# -- artifacts ---------------------------------------------------------------------------------
def split_name(name: str) -> tuple[str, str]:
    """``proj/name`` -> ``("proj", "name")``; ``name`` -> ``("_", "name")``."""
    project, _, base = name.rpartition("/")
    return project or NO_PROJECT, base


def project_folder(project_dir: str) -> str:
    """The folder of one project's artifacts (``_`` for names without a project)."""
    return f"{ARTIFACTS}/{project_dir}"


def name_from_folders(project_dir: str, base: str) -> str:
    return base if project_dir == NO_PROJECT else f"{project_dir}/{base}"


@dataclass(frozen=True)
class ArtifactKeys:
    """Every key of one artifact, under ``artifacts/<project|_>/<name>/``."""

    name: str

    @property
    def prefix(self) -> str:
        project, base = split_name(self.name)
        return f"{project_folder(project)}/{base}"

    @property
    def info(self) -> str:
        return f"{self.prefix}/artifact.json"

    @property
    def renamed(self) -> str:
        """The tombstone a rename leaves under the old name: where the name went."""
        return f"{self.prefix}/renamed.json"

    @property
    def versions(self) -> str:
        return f"{self.prefix}/versions"

    @property
    def aliases(self) -> str:
        return f"{self.prefix}/aliases"

    @property
    def states(self) -> str:
        return f"{self.prefix}/state"

    def state(self, version: int) -> str:
        return f"{self.states}/{version:012d}"

    @staticmethod
    def state_version(key: str) -> int | None:
        """The version number of a key under ``states`` (``.../state/<n>/<k>.json``)."""
        parts = key.split("/")
        return int(parts[-2]) if len(parts) >= 2 and parts[-2].isdigit() else None

    @property
    def deleted(self) -> str:
        """Markers of deleted versions (``deleted/<n>``), each written once the version's
        ``deleted`` state is: a listing then tells which versions are gone without reading
        their states. A version without one may still be deleted (an older writer's)."""
        return f"{self.prefix}/deleted"

    def deleted_marker(self, version: int) -> str:
        return f"{self.deleted}/{version:012d}"

    def digest(self, digest: str) -> str:
        return f"{self.prefix}/digests/{digest.split(':', 1)[-1]}"

    def used_by(self, version: int) -> str:
        return f"{self.prefix}/used_by/{version:012d}"

    def used_by_entry(self, version: int, run_id: str) -> str:
        return f"{self.used_by(version)}/{run_id}.json"


# -- runs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunKeys:
    """Every key of one run, under ``runs/<run id>/`` (the id checked by the caller, with
    ``names.is_run_id``; storage refuses any key that would leave the shelf regardless)."""

    run_id: str

    @property
    def prefix(self) -> str:
        return f"{RUNS}/{self.run_id}"

    @property
    def record(self) -> str:
        return f"{self.prefix}/run.json"

    @property
    def config(self) -> str:
        return f"{self.prefix}/config.json"

    @property
    def summary(self) -> str:
        return f"{self.prefix}/summary.json"

    @property
    def heartbeat(self) -> str:
        return f"{self.prefix}/heartbeat"

    @property
    def end(self) -> str:
        return f"{self.prefix}/end.json"

    def edges(self, kind: str) -> str:
        """The log of ``inputs`` or ``outputs``."""
        return f"{self.prefix}/{kind}"

    @property
    def history(self) -> str:
        return f"{self.prefix}/history"

    def write_once(self, key: str) -> bool:
        """Whether ``key`` of this run is written once (copied with create-if-absent) rather
        than rewritten by the run's process (config, summary, heartbeat)."""
        return key in (self.record, self.end) or key.startswith(
            (f"{self.history}/", f"{self.edges('inputs')}/", f"{self.edges('outputs')}/")
        )


# -- the local download cache ------------------------------------------------------------------
@dataclass(frozen=True)
class CachePaths:
    """The local download cache under ``root`` (``$MODELSHELF_CACHE``)::

    blobs/sha256/<aa>/<hex>                      one copy of each file's bytes, read-only
    shelves/<shelf id>/<project|_>/<name>/v<N>/  a version's files, hard links to the blobs
    tmp/                                         downloads in flight
    hashes.sqlite                                stat -> digest cache
    """

    root: Path

    @property
    def blobs(self) -> Path:
        return self.root / BLOBS / "sha256"

    def blob(self, hexdigest: str) -> Path:
        return self.blobs / hexdigest[:2] / hexdigest

    @property
    def shelves(self) -> Path:
        return self.root / "shelves"

    def version_dir(self, shelf_id: str, name: str, version: int) -> Path:
        project, base = split_name(name)
        return self.shelves / shelf_id / project / base / f"v{version}"

    #: glob of every version folder under ``shelves``
    VERSION_GLOB = "*/*/*/v*"

    @property
    def tmp(self) -> Path:
        return self.root / TMP

    @property
    def hash_db(self) -> Path:
        return self.root / "hashes.sqlite"
