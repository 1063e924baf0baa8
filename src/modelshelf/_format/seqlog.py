"""Append-only logs of numbered JSON records, the building block of versions and aliases.

Record ``n`` of a log lives at ``<prefix>/<n:012d>.json`` and is written once, by the atomic
create-if-absent of the storage layer. Whoever creates record ``n`` first wins; a writer that
loses re-reads the head and tries ``n + 1``. A record is only attempted once record ``n - 1``
was seen, and records are never removed, so the numbers in use are always ``0..head``: the head
is found by probing forward from a hint (``<prefix>/HEAD``), doubling the step, then bisecting.
The hint is rewritten after each append; it may lag behind or even go back under races, which
only costs a few more probes. On an object store, where one listing costs one request, the
head is the newest key a listing shows instead (no hint is read or written), and a ``Listing``
of an artifact's folder taken once serves every log in it (see ``Labels.listed``).

Where create-if-absent cannot write a record whole (no hard links, a generic fsspec backend),
a slot can hold a record that does not decode: one still being written, or one a crash tore.
Such a slot counts as taken (the head is past it) but holds nothing: readers see the newest
record that decodes, and a writer waits until the slot decodes or is *settled*, unchanged for
``TORN_AFTER_SECONDS``, and then appends after it. A torn record is a change that never
happened, as when the writer had crashed a moment earlier. ``modelshelf fsck --repair``
replaces a settled torn record by a *void* record (``{"void": <why>, ...}``), which every
reader skips the same way, without waiting.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from .._errors import ConflictError
from .._storage import Storage
from .layout import head_key, record_key, record_number
from .records import Record, UnreadableRecord, dumps, loads, now

logger = logging.getLogger("modelshelf")

_MAX_TRIES = 200

#: A record that does not decode and has not changed for this long was torn by a crash: no
#: writer takes seconds over a few kilobytes.
TORN_AFTER_SECONDS = 30.0

#: The key of a void record: a slot that holds nothing (a torn record set aside by fsck).
VOID = "void"


def settled(storage: Storage, key: str, first_seen: dict[str, tuple[float, int]]) -> bool:
    """Whether the undecodable record at ``key`` is torn rather than still being written.

    It is when its modification time is ``TORN_AFTER_SECONDS`` old, or when this process has
    seen it unchanged for that long (``first_seen`` remembers when and at what size: a
    filesystem's clock may differ from ours).
    """
    with contextlib.suppress(OSError):
        modified = storage.modified(key)
        if modified is not None and (now() - modified).total_seconds() > TORN_AFTER_SECONDS:
            return True
    try:
        size = storage.size(key)
    except FileNotFoundError:
        return True  # removed since: the slot is free again, and create will say so
    seen = first_seen.get(key)
    if seen is None or seen[1] != size:
        first_seen[key] = (time.monotonic(), size)
        return False
    return time.monotonic() - seen[0] > TORN_AFTER_SECONDS


class RecordStore(Protocol):
    """Where a ``RecordCache`` keeps records beyond its process: by key and the MD5 of their
    bytes as a listing reports it (see ``_core.hashcache.SeenRecords``)."""

    def recall(self, wanted: Mapping[str, str]) -> dict[str, bytes]:
        """The records of ``wanted`` (key: MD5) kept with that very MD5."""
        ...

    def keep(self, rows: Sequence[tuple[str, str, bytes]]) -> None:
        """Keep each (key, MD5, bytes) whose bytes have that MD5."""
        ...


class RecordCache:
    """The bytes of log records that decoded, by key, for one reader of a shelf.

    A record of a log is written once (create-if-absent) and never changed: once it decodes,
    reading it again can only give the same bytes, so they are kept (bytes, not the decoded
    record, so that no caller can change what another one reads). Absent and torn records
    are never kept: they may appear, or be written again. Only ``fsck --repair`` replaces a
    record that decodes, and it runs while no one else uses the shelf.

    With ``disk`` (object stores), records are also kept on this machine for the next
    process, by the MD5 the listing in use reports for their key: one is taken from there
    only when a fresh listing reports the same MD5, so a record replaced since, or a shelf
    made again at the same address, is read afresh.
    """

    MAX_RECORDS = 4096

    def __init__(self, max_records: int = MAX_RECORDS, disk: RecordStore | None = None) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.max_records = max_records
        self.disk = disk

    def get(self, key: str, listing: Listing | None = None) -> bytes | None:
        data = self._data.get(key)
        if data is None and listing is not None:
            data = self.get_many([key], listing).get(key)
        return data

    def get_many(self, keys: Iterable[str], listing: Listing | None) -> dict[str, bytes]:
        """Those of ``keys`` kept here, or on disk with the MD5 ``listing`` shows."""
        got = {k: d for k in keys if (d := self._data.get(k)) is not None}
        if self.disk is not None and listing is not None:
            wanted = {k: m for k in keys if k not in got and (m := listing.md5.get(k))}
            if wanted:
                for key, data in self.disk.recall(wanted).items():
                    self._remember(key, data)
                    got[key] = data
        return got

    def put(self, key: str, data: bytes, listing: Listing | None = None) -> None:
        self.put_many({key: data}, listing)

    def put_many(self, records: Mapping[str, bytes], listing: Listing | None) -> None:
        """Keep ``records`` (they decoded), and on disk those whose MD5 ``listing`` shows."""
        for key, data in records.items():
            self._remember(key, data)
        if self.disk is not None and listing is not None:
            rows = [(k, m, d) for k, d in records.items() if (m := listing.md5.get(k))]
            if rows:
                self.disk.keep(rows)

    def wrote(self, key: str, data: bytes) -> None:
        """Keep a record this process has just created: on disk by the MD5 of its bytes,
        which a later listing reports where the store lists MD5s (else it is never found)."""
        self._remember(key, data)
        if self.disk is not None:
            self.disk.keep([(key, hashlib.md5(data, usedforsecurity=False).hexdigest(), data)])

    def _remember(self, key: str, data: bytes) -> None:
        with self._lock:
            if len(self._data) >= self.max_records:
                # Forget the older half (dicts keep insertion order): a script's working set is
                # far smaller; a long-lived reader (the web UI) asks for a larger cache.
                for old in list(self._data)[: self.max_records // 2]:
                    del self._data[old]
            self._data[key] = data


class Listing:
    """The keys under one prefix at one moment: one request on an object store.

    Reads that go by a listing see the shelf as it was when it was taken: a key it does not
    show is taken as absent without a request, and a log's head is its newest record key. A
    record, once written, is never removed, so every record it shows can be read. ``md5``:
    the MD5 of each key's bytes, where the store lists it.
    """

    def __init__(self, storage: Storage, prefix: str) -> None:
        self.prefix = prefix
        found = storage.find_fingerprints(prefix)
        self.keys = frozenset(found)
        self.md5 = {k: m for k, m in found.items() if m}

    def covers(self, key: str) -> bool:
        return key.startswith(self.prefix + "/")

    def has(self, key: str) -> bool:
        return key in self.keys

    def any_under(self, prefix: str) -> bool:
        return any(k.startswith(prefix + "/") for k in self.keys)

    def numbers(self, prefix: str) -> list[int]:
        """The record numbers of the log under ``prefix``, as listed."""
        return sorted(log_records(self.keys, prefix).values())


def log_records(keys: Iterable[str], prefix: str) -> dict[str, int]:
    """The record keys of the log under ``prefix`` among ``keys`` (those right under it whose
    name is a record number), with their numbers."""
    out = {}
    for key in keys:
        n = record_number(key) if key.rpartition("/")[0] == prefix else None
        if n is not None:
            out[key] = n
    return out


class SeqLog:
    """The numbered records under one prefix of a shelf.

    ``listing``: a ``Listing`` that covers the log, to read it as of that listing (an append
    starts from it and lists again if it lost a race). ``lists``: whether the head may be found
    by listing where the storage lists cheaply; a log that grows by the thousand (a run's
    history) keeps its hint instead, since a listing costs a request per thousand keys.
    """

    def __init__(
        self,
        storage: Storage,
        prefix: str,
        *,
        hint: bool = True,
        cache: RecordCache | None = None,
        listing: Listing | None = None,
        lists: bool = True,
    ) -> None:
        self.storage = storage
        self.prefix = prefix
        self.hint = hint
        self.cache = cache
        self.listing = listing if listing is not None and listing.covers(prefix + "/") else None
        self.lists = lists and storage.lists_heads

    def key(self, n: int) -> str:
        return record_key(self.prefix, n)

    def raw(self, n: int) -> Record | None:
        """Record ``n`` as stored (void records included), or None if there is none;
        UnreadableRecord if it does not decode."""
        key = self.key(n)
        data = self.cache.get(key, self.listing) if self.cache is not None else None
        if data is None:
            if self.listing is not None and not self.listing.has(key):
                return None
            data = self.storage.try_read(key)
            if data is None:
                return None
            record = loads(data, self.storage.describe(key))
            if self.cache is not None:
                self.cache.put(key, data, self.listing)  # it decoded: it never changes again
            return record
        return loads(data, self.storage.describe(key))

    def get(self, n: int) -> Record | None:
        """Record ``n``, or None if there is none or it is void; UnreadableRecord if it does
        not decode."""
        record = self.raw(n)
        return None if record is None or VOID in record else record

    def readable(self, n: int) -> Record | None:
        """Record ``n`` if it is there and decodes, else None."""
        try:
            return self.get(n)
        except UnreadableRecord:
            return None

    def slot(self, n: int) -> tuple[bool, Record | None]:
        """Whether slot ``n`` is taken, and its record when it decodes and is not void."""
        try:
            record = self.raw(n)
        except UnreadableRecord:
            return True, None
        if record is None:
            return False, None
        return True, None if VOID in record else record

    def _void(self, n: int) -> bool:
        try:
            record = self.raw(n)
        except UnreadableRecord:
            return False
        return record is not None and VOID in record

    def _read_hint(self) -> int:
        if not self.hint or self.lists:
            return -1
        data = self.storage.try_read(head_key(self.prefix))
        try:
            return int(data) if data is not None else -1
        except ValueError:
            return -1

    def _write_hint(self, n: int) -> None:
        if self.hint and not self.lists:
            self.storage.replace(head_key(self.prefix), str(n).encode(), durable=False)

    def _head(self) -> tuple[int, Record | None]:
        """``(n, record n)`` of the newest slot taken (the record None if it does not decode),
        or ``(-1, None)`` for an empty log."""
        if self.listing is not None or self.lists:
            listing = self.listing or Listing(self.storage, self.prefix)
            numbers = listing.numbers(self.prefix)
            if not numbers:
                return -1, None
            taken, rec = self.slot(numbers[-1])
            if taken:
                return numbers[-1], rec
            # Listed but gone: set aside by fsck since; find it the long way.
        start = self._read_hint()
        known, known_rec = -1, None
        if start >= 0:
            taken, rec = self.slot(start)
            if taken:
                known, known_rec = start, rec
            # A hint ahead of the records cannot happen unless the shelf was edited by hand;
            # fall back to probing from the start.
        # Gallop: probe known+1, known+2, known+4, ... until one is missing.
        step, missing = 1, None
        while True:
            probe = known + step
            taken, rec = self.slot(probe)
            if not taken:
                missing = probe
                break
            known, known_rec = probe, rec
            step *= 2
        # Bisect between the newest seen and the first missing.
        lo, hi = known, missing
        while hi - lo > 1:
            mid = (lo + hi) // 2
            taken, rec = self.slot(mid)
            if not taken:
                hi = mid
            else:
                lo, known_rec = mid, rec
        if lo >= 0 and lo - max(start, 0) > 16:
            with contextlib.suppress(OSError):  # a read-only shelf: the hint only saves reads
                self._write_hint(lo)
        return lo, known_rec

    def _newest_readable(self, n: int) -> Record | None:
        while n >= 0:
            record = self.readable(n)
            if record is not None:
                return record
            n -= 1
        return None

    def head(self) -> tuple[int, Record | None]:
        """Return ``(n, record)``: the newest slot taken and the newest record at or before it
        that decodes; ``(-1, None)`` for an empty log."""
        n, record = self._head()
        if record is None and n >= 0:
            record = self._newest_readable(n - 1)
        return n, record

    def append(self, make: Callable[[int, Record | None], Record | None]) -> tuple[int, Record]:
        """Append the record ``make(n, head_record)`` as number ``n``; retry on races.

        ``make`` may return None to append nothing; then the current head is returned.
        """
        attempt = 0
        first_seen: dict[str, tuple[float, int]] = {}
        while attempt < _MAX_TRIES:
            n, head = self._head()
            if head is None and n >= 0:  # the head slot holds nothing that decodes
                if not self._void(n):
                    if not settled(self.storage, self.key(n), first_seen):
                        time.sleep(0.05)  # being written by another writer: wait for it
                        continue
                    logger.warning(
                        "%s was torn by a crash; it is skipped (`modelshelf fsck --repair` "
                        "sets it aside)",
                        self.storage.describe(self.key(n)),
                    )
                head = self._newest_readable(n - 1)
            record = make(n + 1, head)
            if record is None:
                assert head is not None
                return n, head
            data = dumps(record)
            if self.storage.create(self.key(n + 1), data):
                if self.cache is not None:
                    self.cache.wrote(self.key(n + 1), data)
                with contextlib.suppress(OSError):
                    self._write_hint(n + 1)
                return n + 1, record
            self.listing = None  # it is behind: from now on, look afresh
            attempt += 1
            time.sleep(random.uniform(0, 0.002 * min(attempt, 50)))
        raise ConflictError(
            f"Could not append to {self.storage.describe(self.prefix)} after {_MAX_TRIES} "
            "attempts: too many writers at once. Try again."
        )

    def head_number(self) -> int:
        """The newest slot taken (-1: none), without reading it when a listing says."""
        if self.listing is not None:
            return max(self.listing.numbers(self.prefix), default=-1)
        return self._head()[0]

    def numbers(self) -> list[int]:
        """The numbers of the records present (listed), oldest first, without reading any."""
        return sorted(self._records().values())

    def _records(self) -> dict[str, int]:
        """The record keys present (as of the listing, if any) with their numbers."""
        listed = self.listing.keys if self.listing is not None else self.storage.find(self.prefix)
        return log_records(listed, self.prefix)

    def all(
        self,
        unreadable: Callable[[int, UnreadableRecord], None] | None = None,
        skip: set[int] | frozenset[int] = frozenset(),
    ) -> list[tuple[int, Record]]:
        """Every record that decodes, oldest first (one listing plus concurrent reads), but
        those numbered in ``skip`` (not read).

        A record that does not decode is left out (it is being written, or was torn by a
        crash), and passed to ``unreadable`` when given.
        """
        numbers = self._records()
        keys = [k for k, n in sorted(numbers.items()) if n not in skip]
        cache = self.cache
        got = cache.get_many(keys, self.listing) if cache is not None else {}
        got.update(self.storage.read_many([k for k in keys if k not in got]))
        decoded = {}
        out = []
        for key in keys:
            n = numbers[key]
            if key in got:
                try:
                    record = loads(got[key], self.storage.describe(key))
                    decoded[key] = got[key]  # it decoded: it never changes again
                    if VOID not in record:
                        out.append((n, record))
                except UnreadableRecord as exc:
                    logger.debug("%s", exc)
                    if unreadable is not None:
                        unreadable(n, exc)
        if cache is not None:
            cache.put_many(decoded, self.listing)
        return sorted(out, key=lambda item: item[0])
