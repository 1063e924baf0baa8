"""Append-only logs of numbered JSON records, the building block of versions and aliases.

Record ``n`` of a log lives at ``<prefix>/<n:012d>.json`` and is written once, by the atomic
create-if-absent of the storage layer. Whoever creates record ``n`` first wins; a writer that
loses re-reads the head and tries ``n + 1``. A record is only attempted once record ``n - 1``
was seen, and records are never removed, so the numbers in use are always ``0..head``: the head
is found by probing forward from a hint (``<prefix>/HEAD``), doubling the step, then bisecting.
The hint is rewritten after each append; it may lag behind or even go back under races, which
only costs a few more probes.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable

from .._errors import ConflictError
from .._storage import Storage
from .layout import head_key, record_key, record_number
from .records import Record, dumps, loads

_MAX_TRIES = 200


class SeqLog:
    """The numbered records under one prefix of a shelf."""

    def __init__(self, storage: Storage, prefix: str, *, hint: bool = True) -> None:
        self.storage = storage
        self.prefix = prefix
        self.hint = hint

    def key(self, n: int) -> str:
        return record_key(self.prefix, n)

    def get(self, n: int) -> Record | None:
        data = self.storage.try_read(self.key(n))
        return None if data is None else loads(data, self.storage.describe(self.key(n)))

    def _read_hint(self) -> int:
        if not self.hint:
            return -1
        data = self.storage.try_read(head_key(self.prefix))
        try:
            return int(data) if data is not None else -1
        except ValueError:
            return -1

    def _write_hint(self, n: int) -> None:
        if self.hint:
            self.storage.replace(head_key(self.prefix), str(n).encode(), durable=False)

    def head(self) -> tuple[int, Record | None]:
        """Return ``(n, record)`` of the newest record, or ``(-1, None)`` for an empty log."""
        start = self._read_hint()
        known, known_rec = -1, None
        if start >= 0:
            known_rec = self.get(start)
            if known_rec is not None:
                known = start
            # A hint ahead of the records cannot happen unless the shelf was edited by hand;
            # fall back to probing from the start.
        # Gallop: probe known+1, known+2, known+4, ... until one is missing.
        step, missing = 1, None
        while True:
            probe = known + step
            rec = self.get(probe)
            if rec is None:
                missing = probe
                break
            known, known_rec = probe, rec
            step *= 2
        # Bisect between the newest seen and the first missing.
        lo, hi = known, missing
        while hi - lo > 1:
            mid = (lo + hi) // 2
            rec = self.get(mid)
            if rec is None:
                hi = mid
            else:
                lo, known_rec = mid, rec
        if lo >= 0 and lo - max(start, 0) > 16:
            with contextlib.suppress(OSError):  # a read-only shelf: the hint only saves reads
                self._write_hint(lo)
        return lo, known_rec

    def append(self, make: Callable[[int, Record | None], Record | None]) -> tuple[int, Record]:
        """Append the record ``make(n, head_record)`` as number ``n``; retry on races.

        ``make`` may return None to append nothing; then the current head is returned.
        """
        for attempt in range(_MAX_TRIES):
            n, head = self.head()
            record = make(n + 1, head)
            if record is None:
                assert head is not None
                return n, head
            if self.storage.create(self.key(n + 1), dumps(record)):
                with contextlib.suppress(OSError):
                    self._write_hint(n + 1)
                return n + 1, record
            time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 50)))
        raise ConflictError(
            f"Could not append to {self.storage.describe(self.prefix)} after {_MAX_TRIES} "
            "attempts: too many writers at once. Try again."
        )

    def all(self) -> list[tuple[int, Record]]:
        """Every record, oldest first (one listing plus concurrent reads)."""
        numbers = {k: record_number(k) for k in self.storage.find(self.prefix)}
        keys = [k for k, n in numbers.items() if n is not None]
        got = self.storage.read_many(keys)
        out = []
        for key in keys:
            n = numbers[key]
            if n is not None and key in got:
                out.append((n, loads(got[key], self.storage.describe(key))))
        return sorted(out, key=lambda item: item[0])
