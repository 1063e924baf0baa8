"""Aliases and the mutable labels of versions (tags, description, metadata, deletion).

Both are logs of whole snapshots on the shelf (docs/format.md): a change appends the next
snapshot, computed from the head, with create-if-absent; a writer that loses a race retries
on the new head, so concurrent changes are never lost.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

from .._errors import ConflictError, IntegrityError, InvalidReferenceError, NotFoundError
from .._format.layout import ArtifactKeys, record_number
from .._format.names import LATEST, validate_alias, validate_name
from .._format.records import (
    AliasRecord,
    Record,
    StateRecord,
    UnreadableRecord,
    dumps,
    isoformat,
    loads,
    now,
    parse_time,
    writer_info,
)
from .._format.seqlog import Listing, RecordCache, SeqLog
from .._storage import Storage
from .hashcache import SeenRecords


def _version_or_none(value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError(f"not a version number: {value!r:.40}")


class AliasEvent(NamedTuple):
    """One move of an alias: it pointed to ``version`` (None: removed) from ``at`` on."""

    alias: str
    version: int | None
    at: _dt.datetime
    run_id: str | None
    previous: int | None = None


def initial_state(record: Record) -> StateRecord:
    """The labels a version has before any change: those of its commit record."""
    return {
        "tags": list(record.get("tags", [])),
        "description": record.get("description"),
        "metadata": dict(record.get("metadata", {})),
    }


class Labels:
    """The alias and label records of the artifacts of one shelf."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._stored: dict[str, str] = {}
        # On an object store, records are kept on this machine too, for the next process.
        self.records = RecordCache(disk=SeenRecords(storage.url) if storage.lists_heads else None)
        self._local = threading.local()  # this thread's listings in use (see ``listed``)

    # -- reading as of one listing ---------------------------------------------------------
    @contextlib.contextmanager
    def listed(self, name: str) -> Iterator[None]:
        """Within this block, this thread reads the records of ``name`` as of one listing of
        its folder (and of the folder a rename pointer leads to), on storages where a listing
        costs one request: the heads of its logs, and which of its keys exist, come from it.

        Elsewhere it changes nothing (probing a local disk costs less than listing it). Writes
        are unaffected: a log append that finds the listing behind lists afresh.
        """
        if not self.storage.lists_heads:
            yield
            return
        stack = self._listings()
        depth = len(stack)
        try:
            stack.append(Listing(self.storage, ArtifactKeys(name).prefix))
            target = self.stored_as(name)
            if target != name:
                stack.append(Listing(self.storage, ArtifactKeys(target).prefix))
            yield
        finally:
            del stack[depth:]

    def _listings(self) -> list[Listing]:
        stack: list[Listing] | None = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def listing_for(self, key: str) -> Listing | None:
        """The listing in use in this thread that covers ``key``, if any."""
        for listing in reversed(self._listings()):
            if listing.covers(key):
                return listing
        return None

    def try_read(self, key: str) -> bytes | None:
        """The bytes at ``key`` (None if absent), or, as of the listing in use, None without a
        request when it does not show the key."""
        listing = self.listing_for(key)
        if listing is not None and not listing.has(key):
            return None
        return self.storage.try_read(key)

    def prefetch(
        self, name: str, versions: list[int], *, newest: bool = True, aliases: bool = True
    ) -> None:
        """Read at once, into the record cache, what resolving a version of ``name`` reads one
        by one: the alias head (if ``aliases``), the newest version record not marked deleted
        (unless ``newest`` is False and ``live_head`` tells it unread), and each of
        ``versions``' record and newest state, as the listing in use shows them (without one:
        nothing)."""
        keys = self.keys(name)
        listing = self.listing_for(keys.versions + "/")
        if listing is None:
            return
        wanted = []
        gone = self.marked_deleted(name)
        live = [n for n in listing.numbers(keys.versions) if n not in gone]
        alias_records = listing.numbers(keys.aliases) if aliases else []
        if alias_records:
            wanted.append(keys.aliases + f"/{alias_records[-1]:012d}.json")
        head = live[-1:]
        if not newest and head and not listing.numbers(keys.state(head[0])):
            head = []  # live by the listing (``live_head``): no need to read it
        for n in {*versions, *head}:
            wanted.append(keys.versions + f"/{n:012d}.json")
            states = listing.numbers(keys.state(n))
            if states:
                wanted.append(keys.state(n) + f"/{states[-1]:012d}.json")
        listed = [k for k in wanted if listing.has(k)]
        kept = self.records.get_many(listed, listing)
        decoded = {}
        for key, data in self.storage.read_many([k for k in listed if k not in kept]).items():
            with contextlib.suppress(UnreadableRecord):
                loads(data, self.storage.describe(key))
                decoded[key] = data  # it decoded: it never changes again
        self.records.put_many(decoded, listing)

    def live_head(self, name: str) -> int | None:
        """The newest version of ``name`` if the listing in use shows it live without a read:
        the newest record not marked deleted (a marker is final) whose version was never
        changed (deleting writes a state record first). None when that takes reading, or
        without a listing."""
        keys = self.keys(name)
        listing = self.listing_for(keys.versions + "/")
        if listing is None:
            return None
        gone = self.marked_deleted(name)
        live = [n for n in listing.numbers(keys.versions) if n not in gone]
        if not live or listing.numbers(keys.state(live[-1])):
            return None
        return live[-1]

    # -- where a name's records are ------------------------------------------------------
    def stored_as(self, name: str) -> str:
        """The name whose folder holds the versions of ``name``: ``name`` itself, or for a
        name given by ``rename``, the name the artifact was first logged under.

        What a folder's ``artifact.json`` says is fixed once written, so the answer is kept
        for the life of this object; a name with no readable record is asked again."""
        hit = self._stored.get(name)
        if hit is not None:
            return hit
        keys = ArtifactKeys(name)
        listing = self.listing_for(keys.info)
        if listing is not None and listing.any_under(keys.versions):
            self._stored[name] = name  # a pointer's folder never holds versions
            return name
        data = self.try_read(keys.info)
        if data is None:
            return name
        try:
            info = loads(data, self.storage.describe(keys.info))
        except UnreadableRecord:  # being written, or torn: no pointer can be trusted yet
            return name
        target = info.get("stored_as")
        if target is not None:
            target = self._pointer_target(name, target)
        self._stored[name] = target or name
        return target or name

    def claimed(self, name: str) -> None:
        """``name``'s record was just created by this process, pointing nowhere: its own
        folder holds its versions (nothing to read to know it)."""
        self._stored[name] = name

    def _pointer_target(self, name: str, target: object) -> str:
        """The folder a rename pointer names, checked: a valid name whose own record is a
        real artifact's (renames always point at the folder that holds the versions)."""

        def bad(what: str) -> IntegrityError:
            return IntegrityError(
                f"The record {self.storage.describe(ArtifactKeys(name).info)} points the name "
                f"{name!r} at {target!r:.80}, {what}; the shelf was edited by hand or tampered "
                "with."
            )

        try:
            target = validate_name(target)
        except InvalidReferenceError:
            raise bad("which is not an artifact name") from None
        if target == name:
            raise bad("itself")
        key = ArtifactKeys(target).info
        data = self.storage.try_read(key)
        if data is None:
            raise bad("which has no record")
        with contextlib.suppress(UnreadableRecord):  # torn: its versions say what it is
            if "stored_as" in loads(data, self.storage.describe(key)):
                raise bad("which is itself a renamed name")
        return target

    def keys(self, name: str) -> ArtifactKeys:
        """The keys of the folder that holds the records of ``name``."""
        return ArtifactKeys(self.stored_as(name))

    def log(self, prefix: str, *, hint: bool = True) -> SeqLog:
        """The log under ``prefix``, reading through this shelf's record cache (and the
        listing in use, if one covers it)."""
        listing = self.listing_for(prefix + "/")
        return SeqLog(self.storage, prefix, hint=hint, cache=self.records, listing=listing)

    def versions_log(self, name: str) -> SeqLog:
        return self.log(self.keys(name).versions)

    # -- mutable state: tags, description, metadata, deletion ------------------------------
    def state(self, name: str, version: int, record: Record) -> Record:
        """The current labels of ``name:v<version>`` whose commit record is ``record``."""
        _, head = self.log(self.keys(name).state(version), hint=False).head()
        return head if head is not None else dict(initial_state(record))

    def all_states(
        self, name: str, skip: set[int] | frozenset[int] = frozenset()
    ) -> dict[int, Record]:
        """The newest state record of each version that was ever changed (but those in
        ``skip``, which are not read)."""
        states_prefix = self.keys(name).states
        listing = self.listing_for(states_prefix + "/")
        listed = listing.keys if listing is not None else self.storage.find(states_prefix)
        latest: dict[int, str] = {}
        for key in listed:
            if not key.startswith(states_prefix + "/"):
                continue
            n = ArtifactKeys.state_version(key)
            if n is not None and n not in skip and record_number(key) is not None:
                latest[n] = max(latest.get(n, ""), key)
        cached = self.records.get_many(latest.values(), listing)
        got = {**cached, **self.storage.read_many([k for k in latest.values() if k not in cached])}
        states = {}
        for n, key in latest.items():
            if key in got:
                try:
                    states[n] = loads(got[key], self.storage.describe(key))
                    self.records.put(key, got[key], listing)  # it decoded: it never changes
                except UnreadableRecord:  # the newest change is being written, or torn
                    head = self.log(self.keys(name).state(n), hint=False).head()
                    if head[1] is not None:
                        states[n] = head[1]
        return states

    def update_state(self, name: str, version: int, change: Callable[[Record], None]) -> Record:
        """Apply ``change`` to the labels of ``name:v<version>`` and record the result."""
        record = self.versions_log(name).get(version)
        if record is None:
            raise NotFoundError(f"{name}:v{version} does not exist.", ref=f"{name}:v{version}")

        def make(_n: int, head: Record | None) -> Record | None:
            base = head if head is not None else initial_state(record)
            state: Record = copy.deepcopy(dict(base))
            if state.get("deleted"):
                raise NotFoundError(f"{name}:v{version} was deleted.", ref=f"{name}:v{version}")
            before = json.dumps(state, sort_keys=True)
            change(state)
            if json.dumps(state, sort_keys=True) == before:
                return None
            state["at"] = isoformat(now())
            return state

        log = self.log(self.keys(name).state(version), hint=False)
        if log.head()[1] is None:
            # The first change: start the log with the state as committed, then change it.
            log.storage.create(log.key(0), dumps(initial_state(record)))
        return log.append(make)[1]

    def mark_deleted(self, name: str, version: int) -> None:
        def change(state: Record) -> None:
            state["deleted"] = True

        self.update_state(name, version, change)
        with contextlib.suppress(OSError):  # only saves readers a read
            self.storage.create(self.keys(name).deleted_marker(version), b"deleted")

    def marked_deleted(self, name: str) -> set[int]:
        """The versions of ``name`` whose deletion marker is there (as of the listing in use).
        Deletion is final, so a marker is always right; a version without one may still be
        deleted (marked by an older release, or a crash came between)."""
        prefix = self.keys(name).deleted
        listing = self.listing_for(prefix + "/")
        listed = listing.keys if listing is not None else self.storage.find(prefix)
        out = set()
        for key in listed:
            folder, _, base = key.rpartition("/")
            if folder == prefix and len(base) == 12 and base.isdigit():
                out.add(int(base))
        return out

    # -- aliases -------------------------------------------------------------------------
    def alias_map(self, name: str) -> dict[str, int]:
        """Every alias of ``name`` (``latest`` excepted) and the version it points to."""
        return self.alias_map_later(name)()

    def alias_map_later(self, name: str) -> Callable[[], dict[str, int]]:
        """What ``alias_map`` would read now, read when called: as of the listing in use now,
        if there is one (then it reads the alias head alone, or nothing when the listing
        shows no alias record)."""
        key = self.keys(name).aliases
        log = self.log(key)
        return lambda: self._alias_map(log, key)

    def _alias_map(self, log: SeqLog, key: str) -> dict[str, int]:
        _, head = log.head()
        aliases = (head or {}).get("aliases", {})
        if not isinstance(aliases, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in aliases.items()
        ):
            raise IntegrityError(
                f"The alias record under {self.storage.describe(key)} is malformed: it maps "
                "aliases to something other than version numbers."
            )
        return dict(aliases)

    def move_aliases(
        self, name: str, moves: dict[str, int | None], *, run_id: str | None = None
    ) -> None:
        """Point each alias at its version (None: remove it), in one atomic record."""
        for alias in moves:
            validate_alias(alias)
        if LATEST in moves:
            raise ConflictError(
                "'latest' is managed by the shelf: it always points to the newest version. "
                "Choose another alias, such as 'best' or 'production'."
            )
        versions = self.versions_log(name)
        for alias, target in moves.items():
            if target is not None and versions.get(target) is None:
                raise NotFoundError(f"Cannot set {alias!r}: {name}:v{target} does not exist.")

        def make(_n: int, head: Record | None) -> Record | None:
            current = dict((head or {}).get("aliases", {}))
            at = isoformat(now())
            events = []
            for alias, target in moves.items():
                previous = current.get(alias)
                if previous == target:
                    continue
                if target is None:
                    current.pop(alias, None)
                else:
                    current[alias] = target
                events.append(
                    {"alias": alias, "from": previous, "to": target, "at": at, "run_id": run_id}
                )
            if not events:
                return None
            record: AliasRecord = {"aliases": current, "events": events, "by": writer_info()}
            return dict(record)

        self.log(self.keys(name).aliases).append(make)

    def remove_alias(
        self, name: str, alias: str, version: int, *, run_id: str | None = None
    ) -> None:
        """Remove ``alias`` from ``name:v<version>``; NotFoundError if it points elsewhere."""
        current = self.alias_map(name).get(alias)
        if current != version:
            where = f"it points to v{current}" if current is not None else "it is not set"
            raise NotFoundError(f"{name}:v{version} has no alias {alias!r} ({where}).")
        self.move_aliases(name, {alias: None}, run_id=run_id)

    def alias_history(self, name: str, alias: str | None) -> list[AliasEvent]:
        """Every move of ``alias`` (or of every alias) of ``name``, oldest first.

        ``latest`` moves with each new version; its history is derived from the versions.
        """
        events = []
        log = self.log(self.keys(name).aliases)
        for k, record in log.all():
            try:
                for e in record.get("events", []):
                    if alias is None or e["alias"] == alias:
                        events.append(
                            AliasEvent(
                                str(e["alias"]), _version_or_none(e["to"]), parse_time(e["at"]),
                                e.get("run_id"), _version_or_none(e["from"]),
                            )
                        )  # fmt: skip
            except (KeyError, TypeError, ValueError, AttributeError):
                raise IntegrityError(
                    f"The alias record {self.storage.describe(log.key(k))} is malformed; the "
                    "shelf was edited by hand or tampered with."
                ) from None
        if alias in (None, LATEST):
            previous = None
            for n, rec in self.versions_log(name).all():
                try:
                    at = parse_time(rec["created_at"])
                except (KeyError, TypeError, ValueError):
                    raise IntegrityError(
                        f"The commit record of {name}:v{n} has no valid created_at time; the "
                        "shelf was edited by hand or tampered with."
                    ) from None
                events.append(AliasEvent(LATEST, n, at, rec.get("run_id"), previous))
                previous = n
        return sorted(events, key=lambda e: e.at)
