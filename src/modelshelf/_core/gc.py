"""gc: free the bytes no version needs, without locks, safely beside writers in flight.

gc and writers meet through two kinds of records (docs/format.md, "Leases and gc"):

- a writer lists the blobs it is about to commit in ``leases/<uuid>.json`` *before* it looks
  at the gc log, and removes the lease after committing;
- gc appends ``gc/<k>.json`` *before* it reads the leases, beats ``gc/<k>.beat`` while it works
  and writes ``gc/<k>.done`` at the end.

A writer that sees a gc record newer than the one it saw when it started waits for that gc
to end, then checks that each of its blobs still exists and stores again any that is gone;
a gc that starts later reads the writer's lease and keeps its blobs. Either way the version
commits only when all its bytes are there.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._format.layout import BLOBS, GC, LEASES, MANIFESTS, ROOT_RECORD, TMP, GcKeys, blob_key
from .._format.layout import manifest_hex as manifest_hex_of
from .._format.manifest import HEX_RE
from .._format.records import GcRecord, isoformat, loads, now, parse_time, writer_info
from .._format.seqlog import SeqLog
from .._storage import Storage

if TYPE_CHECKING:
    from .repository import Repository

logger = logging.getLogger("modelshelf")

GC_BEAT_SECONDS = 5.0
GC_STALE_SECONDS = 60.0
LEASE_TTL_SECONDS = 24 * 3600.0
DEFAULT_GRACE_SECONDS = 3600.0


def gc_head(storage: Storage) -> int:
    return SeqLog(storage, GC).head()[0]


def _gc_over(storage: Storage, k: int, record: dict[str, Any]) -> bool:
    if storage.exists(GcKeys(k).done):
        return True
    beat = storage.try_read(GcKeys(k).beat)
    last = parse_time(beat.decode()) if beat else parse_time(record["started_at"])
    return (now() - last).total_seconds() > GC_STALE_SECONDS  # that gc died


def settle_with_gc(
    storage: Storage, seen: int, blobs: set[str], restore: Callable[[str], object]
) -> None:
    """Return once no gc that started after ``seen`` can still remove one of ``blobs``."""
    log = SeqLog(storage, GC)
    while True:
        head, record = log.head()
        if head == seen or record is None:
            return
        waited = time.monotonic()
        while not _gc_over(storage, head, record):
            if time.monotonic() - waited > 30:
                logger.warning("waiting for gc %d on %s to finish", head, storage.url)
                waited = time.monotonic()
            time.sleep(0.1)
        for hexdigest in sorted(blobs):
            if not storage.exists(blob_key(hexdigest)):
                restore(hexdigest)
        seen = head


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
    freed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        return (
            f"gc {verb} {self.blobs} blob(s), {self.bytes} bytes, {self.manifests} manifest(s), "
            f"{self.leases} stale lease(s), {self.temporary} temporary file(s); kept "
            f"{self.kept_young} unreferenced blob(s) younger than the grace period and "
            f"{self.kept_leased} held by writers in flight"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "freed"}


def _referenced(repo: Repository) -> tuple[set[str], set[str]]:
    """Blobs and manifests that a live (not deleted) version needs."""
    blobs: set[str] = set()
    manifests: set[str] = set()
    for name in repo.artifacts():
        states = repo.labels.all_states(name)
        for n, record in repo.labels.versions_log(name).all():
            if states.get(n, {}).get("deleted"):
                continue
            manifests.add(record["manifest"])
    for hexdigest in manifests:
        blobs |= repo.manifest(hexdigest).blob_hexes()
    return blobs, manifests


def gc(repo: Repository, *, dry_run: bool, grace_period: float) -> GcReport:
    """Free the blobs and manifests no version needs (see the module's docstring)."""
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
        _collect(repo, report, grace_period)
    finally:
        stop.set()
        thread.join()
        storage.replace(GcKeys(k).done, isoformat(now()).encode())
    return report


def _collect(repo: Repository, report: GcReport, grace_period: float) -> None:
    storage = repo.storage
    # Leases are read after the gc record is written: a writer that leased later sees it.
    leased: set[str] = set()
    stale_leases = []
    lease_keys = [k for k in storage.find(LEASES) if k.endswith(".json")]
    for key, data in storage.read_many(lease_keys).items():
        lease = loads(data, key)
        age = (now() - parse_time(lease["at"])).total_seconds()
        if age > LEASE_TTL_SECONDS:
            stale_leases.append(key)
        else:
            leased.update(lease.get("blobs", []))
    referenced, manifests = _referenced(repo)
    cutoff = now() - _dt.timedelta(seconds=grace_period)

    victims = []
    for key, (size, mtime) in storage.find_detailed(BLOBS).items():
        hexdigest = key.rsplit("/", 1)[-1]
        if not HEX_RE.fullmatch(hexdigest) or hexdigest in referenced:
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
    for key, (_size, mtime) in storage.find_detailed(MANIFESTS).items():
        hexdigest = manifest_hex_of(key)
        if hexdigest not in manifests and (mtime is None or mtime <= cutoff):
            old_manifests.append(key)
    temporary = [
        key
        for key, (_size, mtime) in storage.find_detailed(TMP).items()
        if mtime is None or mtime <= cutoff
    ]
    report.manifests = len(old_manifests)
    report.leases = len(stale_leases)
    report.temporary = len(temporary)
    report.freed = victims + old_manifests
    if not report.dry_run:
        storage.delete_many(victims + old_manifests + stale_leases + temporary)
