"""``fsck``: check a whole shelf, report the damage per version, and set it aside on request.

What is checked: the root record; every artifact's ``artifact.json``, commit records, alias
and state logs; each live version's manifest (present, matching its key and the commit's
content digest) and each of its blobs (present, and re-hashed); the runs' records and logs;
the gc log and writers' leases. What is counted but is no damage: blobs and manifests no
version needs, stale temporaries and leases (``gc`` frees them), and records being written.

``repair=True`` never deletes data. Damaged bytes are *moved* under ``quarantine/<when>/``
with their keys; a record that does not decode is replaced by a void record that every reader
skips; a version that lost a manifest or a blob is marked ``quarantined`` (it reads as deleted,
with the reason, and gc keeps whatever of it is left); an alias that points at no live version
is removed. Afterwards gc frees storage again. Records still being written are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .._config import FORMAT_VERSION
from .._core.labels import initial_state
from .._core.repository import check_commit_record, info_from_commit
from .._errors import IntegrityError
from .._format import seqlog
from .._format.layout import (
    BLOBS,
    GC,
    LEASES,
    MANIFESTS,
    ROOT_RECORD,
    RUNS,
    TMP,
    ArtifactKeys,
    RunKeys,
    blob_key,
    manifest_hex,
    manifest_key,
    record_key,
)
from .._format.manifest import HEX_RE, Manifest
from .._format.names import is_run_id
from .._format.records import (
    Record,
    RootRecord,
    UnreadableRecord,
    dumps,
    isoformat,
    loads,
    now,
    writer_info,
)
from .._format.seqlog import VOID, SeqLog
from .._storage.hashing import hash_chunks

if TYPE_CHECKING:
    from .._core.repository import Repository

QUARANTINE = "quarantine"

#: Kinds of damage, as reported (``Problem.kind``).
TORN = "torn-record"
BAD_RECORD = "bad-record"
MISSING_RECORD = "missing-record"
MISSING_MANIFEST = "missing-manifest"
CORRUPT_MANIFEST = "corrupt-manifest"
MISSING_BLOB = "missing-blob"
CORRUPT_BLOB = "corrupt-blob"
DANGLING_ALIAS = "dangling-alias"


@dataclass
class Problem:
    """One piece of damage: its kind, where it is, the version it concerns (if one), what is
    wrong, and what ``repair`` did about it."""

    kind: str
    where: str
    detail: str
    ref: str | None = None
    repaired: str | None = None

    def __str__(self) -> str:
        done = f" [repaired: {self.repaired}]" if self.repaired else ""
        return f"{self.kind}: {self.where}: {self.detail}{done}"


@dataclass
class FsckReport:
    """What ``Shelf.fsck`` found (``problems``), what it checked, and the garbage gc frees."""

    repair: bool
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    garbage: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    quarantine: str | None = None

    @property
    def ok(self) -> bool:
        """No damage is left (none was found, or all of it was set aside)."""
        return all(p.repaired for p in self.problems)

    def by_version(self) -> dict[str, list[Problem]]:
        out: dict[str, list[Problem]] = defaultdict(list)
        for p in self.problems:
            out[p.ref or "(shelf)"].append(p)
        return dict(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "repair": self.repair,
            "checked": dict(self.checked),
            "garbage": dict(self.garbage),
            "quarantine": self.quarantine,
            "problems": [asdict(p) for p in self.problems],
        }

    def __str__(self) -> str:
        checked = ", ".join(f"{n} {what}" for what, n in self.checked.items())
        lines = [f"checked {checked}"]
        for ref, problems in self.by_version().items():
            lines.append(f"{ref}:")
            lines.extend(f"  {p}" for p in problems)
        if self.garbage:
            lines.append(
                "not needed by any version (gc frees them): "
                + ", ".join(f"{n} {what}" for what, n in self.garbage.items())
            )
        if self.quarantine:
            lines.append(f"damaged bytes were moved under {self.quarantine}")
        left = sum(1 for p in self.problems if not p.repaired)
        if not self.problems:
            lines.append("no damage found")
        elif left:
            lines.append(
                f"{left} problem(s) left"
                + ("" if self.repair else "; `modelshelf fsck --repair` sets them aside")
            )
        else:
            lines.append("every problem was set aside")
        return "\n".join(lines)


class _Fsck:
    def __init__(self, repo: Repository, repair: bool) -> None:
        self.repo = repo
        self.storage = repo.storage
        self.report = FsckReport(repair=repair)
        self.folder = f"{QUARANTINE}/{now().strftime('%Y%m%d-%H%M%S-%f')}"
        self.blob_refs: dict[str, set[str]] = defaultdict(set)  # blob -> live versions
        self.manifests: set[str] = set()  # manifests a version (live or set aside) names
        self.set_aside: dict[str, str] = {}  # ref -> why, versions to quarantine
        self.kept: set[str] = set()  # blobs of versions set aside earlier

    # -- reporting and repairs -----------------------------------------------------------
    def problem(self, kind: str, key: str | None, detail: str, ref: str | None = None) -> Problem:
        where = self.storage.describe(key) if key is not None else (ref or self.repo.url)
        p = Problem(kind, where, detail, ref)
        self.report.problems.append(p)
        return p

    def move_aside(self, key: str) -> None:
        """Move the bytes at ``key`` under the quarantine folder (never deleted)."""
        self.storage.move(key, f"{self.folder}/{key}")
        self.report.quarantine = self.storage.describe(self.folder)

    def settled(self, key: str) -> bool:
        try:
            modified = self.storage.modified(key)
        except FileNotFoundError:
            return False
        age = (now() - modified).total_seconds() if modified is not None else None
        return age is None or age > seqlog.TORN_AFTER_SECONDS

    def void(self, key: str, why: str, problem: Problem) -> None:
        """Set a log record aside: its bytes to quarantine, a void record in its slot."""
        data = self.storage.try_read(key)
        if data is not None:
            self.storage.create(f"{self.folder}/{key}", data)
            self.report.quarantine = self.storage.describe(self.folder)
        record = {VOID: why, "at": isoformat(now()), "by": writer_info()}
        self.storage.replace(key, dumps(record))
        problem.repaired = "moved to quarantine; a void record holds its slot"

    # -- the parts -------------------------------------------------------------------------
    def run(self) -> FsckReport:
        if not self.root():
            return self.report
        for name in self.repo.folders():
            self.folder_of(name)
        self.blobs()
        self.orphans()
        self.runs()
        self.log(GC, None)
        self.leases()
        for ref, why in sorted(self.set_aside.items()):
            self.quarantine_version(ref, why)
        return self.report

    def root(self) -> bool:
        data = self.storage.try_read(ROOT_RECORD)
        if data is None:
            if self.storage.listdir(""):
                self.problem(MISSING_RECORD, ROOT_RECORD, "the shelf has no root record")
            return False
        self.report.checked["records"] += 1
        try:
            self.repo.info(create=False)
            return True
        except IntegrityError as exc:
            p = self.problem(
                TORN if isinstance(exc, UnreadableRecord) else BAD_RECORD, ROOT_RECORD, str(exc)
            )
        if self.report.repair and self.settled(ROOT_RECORD):
            record: RootRecord = {
                "format": FORMAT_VERSION, "id": uuid.uuid4().hex, "created_at": isoformat(now()),
                "created_by": writer_info(),
            }  # fmt: skip
            self.move_aside(ROOT_RECORD)
            self.storage.replace(ROOT_RECORD, dumps(record))
            p.repaired = "moved to quarantine; a new root record (a new shelf id) was written"
            return True
        return False

    def record(self, key: str, ref: str | None) -> tuple[Record | None, Problem | None]:
        """The record at ``key`` if it is there and decodes; else the problem, if one (a
        record being written is none)."""
        try:
            data = self.storage.try_read(key)
            if data is None:
                return None, None
            self.report.checked["records"] += 1
            return loads(data, self.storage.describe(key)), None
        except UnreadableRecord as exc:
            if not self.settled(key):
                self.report.checked["records being written (left alone)"] += 1
                return None, None
            return None, self.problem(TORN, key, str(exc), ref)
        except IntegrityError as exc:
            return None, self.problem(BAD_RECORD, key, str(exc), ref)

    def record_or_aside(self, key: str, ref: str | None) -> None:
        """Check a record that stands alone (a run's, a lease); repair moves a bad one aside."""
        _record, p = self.record(key, ref)
        if p is not None and self.report.repair:
            self.move_aside(key)
            p.repaired = "moved to quarantine"

    def log(self, prefix: str, ref_of: Any) -> dict[int, Record]:
        """Check every slot of the log under ``prefix``; its records that decode."""
        log = SeqLog(self.storage, prefix)
        head, _ = log.head()
        records = {}
        for n in range(head + 1):
            key = log.key(n)
            ref = ref_of(n) if ref_of else None
            try:
                record = log.raw(n)
            except IntegrityError as exc:
                torn = isinstance(exc, UnreadableRecord)
                if torn and not self.settled(key):
                    self.report.checked["records being written (left alone)"] += 1
                    continue
                p = self.problem(TORN if torn else BAD_RECORD, key, str(exc), ref)
                if self.report.repair:
                    why = "torn" if torn else "damaged"
                    self.void(key, f"{why} record set aside by fsck", p)
                continue
            if record is None:
                p = self.problem(MISSING_RECORD, key, f"record {n} of {head} is missing", ref)
                if self.report.repair and self.storage.create(
                    key, dumps({VOID: "missing record filled by fsck", "at": isoformat(now())})
                ):
                    p.repaired = "a void record fills the gap"
                continue
            self.report.checked["records"] += 1
            if VOID not in record:
                records[n] = record
        return records

    def folder_of(self, name: str) -> None:
        """One artifact folder: a name's own, or the pointer and tombstone a rename left."""
        try:
            stored = self.repo.labels.stored_as(name)
        except IntegrityError as exc:
            self.problem(BAD_RECORD, ArtifactKeys(name).info, str(exc))
            return
        try:
            self.repo.current_name(name)
        except IntegrityError as exc:
            self.problem(BAD_RECORD, ArtifactKeys(name).renamed, str(exc))
        if stored == name:
            self.artifact(name)

    def artifact(self, name: str) -> None:
        keys = ArtifactKeys(name)
        self.report.checked["artifacts"] += 1
        versions = self.log(keys.versions, lambda n: f"{name}:v{n}")
        present = self.storage.exists(keys.info)
        info, p = self.record(keys.info, None)
        if info is None and versions and (p is not None or not present):
            if p is None:
                p = self.problem(MISSING_RECORD, keys.info, "the artifact's record is missing")
            if self.report.repair:
                if present:
                    self.move_aside(keys.info)
                rebuilt = info_from_commit(name, versions[min(versions)])
                self.storage.replace(keys.info, dumps(rebuilt))
                p.repaired = "written again from the first version's commit record"
        self.log(keys.aliases, None)
        states = {}
        for n in versions:
            records = self.log(keys.state(n), lambda _k, n=n: f"{name}:v{n}")
            if records:
                states[n] = records[max(records)]
        live = set()
        for n, record in versions.items():
            ref = f"{name}:v{n}"
            try:
                check_commit_record(name, n, record)
            except IntegrityError as exc:
                key = record_key(keys.versions, n)
                p = self.problem(BAD_RECORD, key, str(exc), ref)
                if self.report.repair:
                    self.void(key, "damaged commit record set aside by fsck", p)
                continue
            state = states.get(n, dict(initial_state(record)))
            if state.get("deleted") and not state.get("quarantined"):
                continue  # gc may have freed its bytes, as it should
            self.report.checked["versions"] += 1
            self.version(ref, record, quarantined=bool(state.get("quarantined")))
            if not state.get("deleted"):
                live.add(n)
        try:
            aliases = self.repo.labels.alias_map(name)
        except IntegrityError as exc:
            self.problem(BAD_RECORD, keys.aliases, str(exc), None)
            return
        for alias, n in sorted(aliases.items()):
            if n not in live:
                p = self.problem(
                    DANGLING_ALIAS, keys.aliases, f"{alias!r} points to v{n}, which is not live",
                    f"{name}:v{n}",
                )  # fmt: skip
                if self.report.repair:
                    self.repo.labels.move_aliases(name, {alias: None})
                    p.repaired = "the alias was removed"

    def version(self, ref: str, record: Record, *, quarantined: bool) -> None:
        hexdigest = str(record["manifest"])
        key = manifest_key(hexdigest)
        self.manifests.add(hexdigest)
        try:
            data = self.storage.read(key)
        except FileNotFoundError:
            if not quarantined:
                self.problem(MISSING_MANIFEST, key, "the manifest is missing", ref)
                self.set_aside[ref] = "its manifest is missing"
            return
        self.report.checked["manifests"] += 1
        try:
            if hashlib.sha256(data).hexdigest() != hexdigest:
                raise IntegrityError("its bytes do not hash to its key")
            manifest = Manifest.from_bytes(data, self.storage.describe(key))
            if manifest.digest() != record["digest"]:
                raise IntegrityError(
                    f"it holds the content {manifest.digest()}, the commit record says "
                    f"{record['digest']}"
                )
        except IntegrityError as exc:
            if not quarantined:
                p = self.problem(CORRUPT_MANIFEST, key, str(exc), ref)
                self.set_aside[ref] = "its manifest is corrupt"
                if self.report.repair:
                    self.move_aside(key)
                    p.repaired = "moved to quarantine"
            return
        for blob in manifest.blob_hexes():
            if quarantined:
                self.kept.add(blob)  # gc keeps what is left of a version set aside
            else:
                self.blob_refs[blob].add(ref)

    def blobs(self) -> None:
        for blob, refs in sorted(self.blob_refs.items()):
            key = blob_key(blob)
            try:
                got, _size = hash_chunks(self.storage.iter_chunks(key))
            except FileNotFoundError:
                for ref in sorted(refs):
                    self.problem(MISSING_BLOB, key, "the blob is missing", ref)
                    self.set_aside[ref] = "a blob it needs is missing"
                continue
            self.report.checked["blobs"] += 1
            if got != blob:
                moved = False
                for ref in sorted(refs):
                    p = self.problem(CORRUPT_BLOB, key, f"its bytes hash to {got}", ref)
                    self.set_aside[ref] = "a blob it needs is corrupt"
                    if self.report.repair:
                        if not moved:
                            self.move_aside(key)
                            moved = True
                        p.repaired = "moved to quarantine"

    def orphans(self) -> None:
        leased: set[str] = set()
        for key in self.storage.find(LEASES):
            data = self.storage.try_read(key)
            with contextlib.suppress(IntegrityError):
                lease = loads(data or b"{}", key)
                leased |= set(lease.get("blobs", [])) | set(lease.get("manifests", []))
        for key, (size, _mtime) in self.storage.find_detailed(BLOBS).items():
            hexdigest = key.rsplit("/", 1)[-1]
            needed = hexdigest in self.blob_refs or hexdigest in self.kept or hexdigest in leased
            if HEX_RE.fullmatch(hexdigest) and not needed:
                self.report.garbage["blobs"] += 1
                self.report.garbage["bytes"] += size
        for key in self.storage.find(MANIFESTS):
            hexdigest = manifest_hex(key)
            if hexdigest not in self.manifests and hexdigest not in leased:
                self.report.garbage["manifests"] += 1
        temporary = len(self.storage.find(TMP))
        if temporary:
            self.report.garbage["temporary files"] += temporary

    def runs(self) -> None:
        for run_id in self.storage.listdir(RUNS):
            if not is_run_id(run_id):
                self.problem(BAD_RECORD, f"{RUNS}/{run_id}", "not a run id", None)
                continue
            keys = RunKeys(run_id)
            self.report.checked["runs"] += 1
            self.record_or_aside(keys.record, None)
            self.record_or_aside(keys.end, None)
            for kind in ("inputs", "outputs"):
                self.log(keys.edges(kind), None)
            self.log(keys.history, None)

    def leases(self) -> None:
        for key in self.storage.find(LEASES):
            if key.endswith(".json"):
                self.record_or_aside(key, None)

    def quarantine_version(self, ref: str, why: str) -> None:
        """Mark a version whose bytes are damaged as set aside, so that gc works again."""
        problems = [p for p in self.report.problems if p.ref == ref]
        if not self.report.repair:
            return
        name, _, number = ref.rpartition(":v")

        def change(state: Record) -> None:
            state["deleted"] = True
            state["quarantined"] = why

        held = [a for a, n in self.repo.labels.alias_map(name).items() if n == int(number)]
        if held:
            self.repo.labels.move_aliases(name, dict.fromkeys(held))
        self.repo.labels.update_state(name, int(number), change)
        removed = f" (its aliases {', '.join(held)} removed)" if held else ""
        for p in problems:
            p.repaired = (p.repaired + "; " if p.repaired else "") + "version set aside" + removed


def fsck(repo: Repository, *, repair: bool = False) -> FsckReport:
    """Check the whole shelf (see the module's docstring)."""
    return _Fsck(repo, repair).run()
