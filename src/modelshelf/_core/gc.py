"""gc: free the bytes no version needs, without locks, safely beside writers in flight.

gc and writers meet through two kinds of records (docs/format.md, "Leases and gc"):

- a writer notes, before it looks at any blob, the first gc pass it must outlast (every pass
  still running then, and every later one: ``gc_floor``); it lists the blobs and the manifest
  it is about to commit in ``leases/<uuid>.json`` *before* it looks at the gc log again, and
  removes the lease after committing;
- gc appends ``gc/<k>.json`` *before* it reads the leases, beats ``gc/<k>.beat`` while it works
  and writes ``gc/<k>.done`` at the end.

A writer waits for every pass from its floor that has started to end, then checks that each
blob and the manifest it references still exists and stores again whatever is gone (whether
it wrote those bytes or found them there); a pass that starts later reads the writer's lease
and keeps them. Either way the version commits only when all its bytes are there.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import IntegrityError
from .._format.layout import (
    BLOBS,
    GC,
    LEASES,
    MANIFESTS,
    ROOT_RECORD,
    TMP,
    GcKeys,
    blob_key,
    manifest_key,
)
from .._format.layout import manifest_hex as manifest_hex_of
from .._format.manifest import HEX_RE
from .._format.records import (
    GcRecord,
    isoformat,
    loads,
    now,
    parse_beat,
    parse_time,
    writer_info,
)
from .._format.seqlog import SeqLog
from .._storage import Storage

if TYPE_CHECKING:
    from .repository import Repository
    from .version import ArtifactVersion

logger = logging.getLogger("modelshelf")

GC_BEAT_SECONDS = 5.0
GC_STALE_SECONDS = 60.0
LEASE_TTL_SECONDS = 24 * 3600.0
DEFAULT_GRACE_SECONDS = 3600.0


TMP_TTL_SECONDS = 24 * 3600.0  # a temporary file this old belongs to no writer in flight


def _gc_over(storage: Storage, log: SeqLog, k: int) -> bool:
    """Whether gc pass ``k`` ended (or died; or never existed)."""
    taken, record = log.slot(k)
    if not taken or storage.exists(GcKeys(k).done):
        return True
    last = parse_beat(storage.try_read(GcKeys(k).beat))
    if last is None and record is not None:
        started = record.get("started_at")
        last = parse_beat(started.encode()) if isinstance(started, str) else None
    if last is None:  # a record being written, torn or malformed: as old as its key
        try:
            last = storage.modified(log.key(k)) or now()
        except FileNotFoundError:
            return True
    return (now() - last).total_seconds() > GC_STALE_SECONDS  # that gc died


class GcFloor(NamedTuple):
    """``gc_floor``: the first gc pass a writer starting now must outlast, and the newest."""

    floor: int
    head: int  # -1: no pass ever

    @property
    def quiet(self) -> bool:
        """Every pass so far is over. Only a gc pass frees blobs, and each is in the gc log
        before it lists anything: while the log's head stays ``head``, a blob seen on the
        shelf after this was read is still there."""
        return self.floor == self.head + 1


def gc_floor(storage: Storage) -> GcFloor:
    """The first gc pass a writer starting now must outlast (and the newest pass).

    That is every pass that starts from now on, and every pass still running now: a pass
    running now listed the leases and the versions before this writer's lease and commit
    exist, so it may free bytes the writer is about to reuse. Read it before looking at any
    blob.
    """
    log = SeqLog(storage, GC)
    head, _ = log.head()
    floor = head + 1
    while floor > 0 and not _gc_over(storage, log, floor - 1):
        floor -= 1
    return GcFloor(floor, head)


def settle_with_gc(storage: Storage, floor: int, ensure: Callable[[], object]) -> None:
    """Return once no gc pass numbered ``floor`` or later can still free what the writer
    references.

    The writer's lease (its blobs and manifest) is on the shelf already, so a pass that starts
    after this returns keeps them. Each pass from ``floor`` on that has started is waited for;
    then ``ensure()`` checks that everything the commit references exists, storing again
    whatever a pass freed; and again if another pass started meanwhile.
    """
    log = SeqLog(storage, GC)
    while True:
        head, _ = log.head()
        if head < floor:
            return
        for k in range(floor, head + 1):
            _wait_over(storage, log, k)
        ensure()
        floor = head + 1


def outlast_gc(storage: Storage, seen: GcFloor, ensure: Callable[[], object]) -> None:
    """Return once no gc pass can still free what the writer references, for a writer whose
    lease was on the shelf before it read ``seen`` (its floor).

    A pass newer than ``seen.head`` entered the gc log after that read, so after the lease
    was there: it reads the lease and keeps what it names. The passes that were still running
    then may have read the leases before it; each is waited for, and then ``ensure()`` checks
    that everything the commit references exists, storing again whatever a pass freed. No
    pass running: nothing to wait for, and no request."""
    if seen.quiet:
        return
    log = SeqLog(storage, GC)
    for k in range(seen.floor, seen.head + 1):
        _wait_over(storage, log, k)
    ensure()


def _wait_over(storage: Storage, log: SeqLog, k: int) -> None:
    waited, pause = time.monotonic(), 0.02
    while not _gc_over(storage, log, k):
        if time.monotonic() - waited > 30:
            logger.warning("waiting for gc %d on %s to finish", k, storage.url)
            waited = time.monotonic()
        time.sleep(pause)
        pause = min(pause * 1.5, 1.0)  # a few checks a second at most: a bucket pays per request


@dataclass
class GcReport:
    """What ``gc`` freed (or, with ``dry_run``, would free)."""

    blobs: int = 0
    bytes: int = 0
    manifests: int = 0
    leases: int = 0
    temporary: int = 0
    kept_young: int = 0
    kept_leased: int = 0
    dry_run: bool = False
    damaged: list[str] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (
            f"gc {verb} {self.blobs} blob(s), {self.bytes} bytes, {self.manifests} manifest(s), "
            f"{self.leases} stale lease(s), {self.temporary} temporary file(s); kept "
            f"{self.kept_young} unreferenced blob(s) younger than the grace period and "
            f"{self.kept_leased} held by writers in flight"
            + (
                f"; freed no blob: {len(self.damaged)} damaged version(s) "
                f"({', '.join(self.damaged[:5])}) might need any of them"
                if self.damaged
                else ""
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "freed"}


def _referenced(repo: Repository, report: GcReport) -> tuple[set[str], set[str]]:
    """Blobs and manifests that a live (not deleted) version needs; versions whose commit
    record or manifest cannot be read go to ``report.damaged``."""
    blobs: set[str] = set()
    manifests: dict[str, str] = {}
    set_aside: set[str] = set()  # manifests of versions fsck quarantined: kept, if readable
    for name in repo.stored_names():
        states = repo.labels.all_states(name)

        def unreadable(n: int, _exc: Exception, name: str = name) -> None:
            report.damaged.append(f"{name}:v{n}")  # being written, or torn: it may need any

        for n, record in repo.labels.versions_log(name).all(unreadable):
            state = states.get(n, {})
            if not state.get("deleted") or state.get("quarantined"):
                manifests.setdefault(str(record.get("manifest")), f"{name}:v{n}")
            if state.get("quarantined"):
                set_aside.add(str(record.get("manifest")))
    for hexdigest, ref in manifests.items():
        try:
            blobs |= repo.manifest(hexdigest).blob_hexes()
        except IntegrityError:
            if hexdigest not in set_aside:  # known damage that fsck set aside blocks nothing
                report.damaged.append(ref)
    return blobs, set(manifests)


def gc(
    repo: Repository,
    *,
    dry_run: bool,
    grace_period: float,
    only: Iterable[ArtifactVersion] | None = None,
) -> GcReport:
    """Free the blobs and manifests no version needs (see the module's docstring).

    ``only``: versions just deleted; free only their own blobs and manifests (those no other
    version needs), without listing every blob of the shelf: what ``keep_last`` does after each
    prune. The handshake with writers is the same; stale leases and temporary files are left
    to a full pass.
    """
    storage = repo.storage
    report = GcReport(dry_run=dry_run)
    if storage.try_read(ROOT_RECORD) is None:
        return report
    record: GcRecord = {"started_at": isoformat(now()), "by": writer_info(), "dry_run": dry_run}
    k, _ = SeqLog(storage, GC).append(lambda _n, _h: dict(record))
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(OSError):
                storage.replace(GcKeys(k).beat, isoformat(now()).encode(), durable=False)
            if stop.wait(GC_BEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name="modelshelf-gc-beat", daemon=True)
    thread.start()
    try:
        _collect(repo, report, grace_period, None if only is None else list(only))
    finally:
        stop.set()
        thread.join()
        storage.replace(GcKeys(k).done, isoformat(now()).encode())
    return report


def _candidates(
    repo: Repository, versions: list[ArtifactVersion]
) -> tuple[dict[str, tuple[int, _dt.datetime | None]], dict[str, tuple[int, _dt.datetime | None]]]:
    """The blob and manifest keys of ``versions`` that exist, with size and time, as
    ``find_detailed`` gives them (one request per key: there are few)."""
    storage = repo.storage
    blobs: dict[str, tuple[int, _dt.datetime | None]] = {}
    manifests: dict[str, tuple[int, _dt.datetime | None]] = {}
    for version in versions:
        try:
            sizes = version.manifest.blob_sizes()
        except IntegrityError:
            sizes = {}
        wanted = [(blobs, blob_key(h)) for h in sizes]
        if HEX_RE.fullmatch(version.manifest_hex):
            wanted.append((manifests, manifest_key(version.manifest_hex)))
        for found, key in wanted:
            if key in found:
                continue
            with contextlib.suppress(FileNotFoundError):
                found[key] = (storage.size(key), storage.modified(key))
    return blobs, manifests


def _collect(
    repo: Repository, report: GcReport, grace_period: float, only: list[ArtifactVersion] | None
) -> None:
    storage = repo.storage
    # Leases are read after the gc record is written: a writer that leased later sees it.
    leased: set[str] = set()
    leased_manifests: set[str] = set()
    stale_leases = []
    lease_keys = [k for k in storage.find(LEASES) if k.endswith(".json")]
    for key, data in storage.read_many(lease_keys).items():
        try:
            lease = loads(data, storage.describe(key))
        except IntegrityError:  # a writer's lease that cannot be read may hold anything
            report.damaged.append(storage.describe(key))
            continue
        age = (now() - parse_time(lease["at"])).total_seconds()
        if age > LEASE_TTL_SECONDS:
            stale_leases.append(key)
        else:
            leased.update(lease.get("blobs", []))
            leased_manifests.update(lease.get("manifests", []))
    referenced, manifests = _referenced(repo, report)
    cutoff = now() - _dt.timedelta(seconds=grace_period)

    if only is None:
        blob_keys, manifest_keys = storage.find_detailed(BLOBS), storage.find_detailed(MANIFESTS)
    else:
        blob_keys, manifest_keys = _candidates(repo, only)
        stale_leases = []
    victims = []
    for key, (size, mtime) in blob_keys.items():
        hexdigest = key.rsplit("/", 1)[-1]
        if not HEX_RE.fullmatch(hexdigest) or hexdigest in referenced:
            continue
        if report.damaged:  # a version whose manifest is gone may need any blob: keep them all
            continue
        if hexdigest in leased:
            report.kept_leased += 1
        elif mtime is not None and mtime > cutoff:
            report.kept_young += 1
        else:
            victims.append(key)
            report.blobs += 1
            report.bytes += size
    old_manifests = []
    for key, (_size, mtime) in manifest_keys.items():
        hexdigest = manifest_hex_of(key)
        if hexdigest in manifests or hexdigest in leased_manifests or report.damaged:
            continue
        if mtime is None or mtime <= cutoff:
            old_manifests.append(key)
    tmp_cutoff = now() - _dt.timedelta(seconds=max(grace_period, TMP_TTL_SECONDS))
    temporary = [
        key
        for key, (_size, mtime) in (storage.find_detailed(TMP) if only is None else {}).items()
        if mtime is not None and mtime <= tmp_cutoff
    ]
    report.manifests = len(old_manifests)
    report.leases = len(stale_leases)
    report.temporary = len(temporary)
    report.freed = victims + old_manifests
    if not report.dry_run:
        storage.delete_many(victims + old_manifests + stale_leases + temporary)
