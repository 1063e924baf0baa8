"""The repository core: one shelf's records and blobs, and the one path that commits a version.

``Shelf`` is the public facade over a ``Repository``; features (runs, lineage, diff, copy,
clean-up), model codecs and the checkpoint engine use the methods below, never the
facade's private parts. The commit protocol is docs/format.md's "Committing a version".
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from .._config import FORMAT_VERSION
from .._errors import ConflictError, IntegrityError, InvalidReferenceError, NotFoundError
from .._format.layout import (
    ARTIFACTS,
    ROOT_RECORD,
    ArtifactKeys,
    RunKeys,
    blob_key,
    lease_key,
    manifest_key,
    name_from_folders,
    project_folder,
)
from .._format.manifest import HEX_RE, FileEntry, Manifest
from .._format.names import LATEST, Ref, is_run_id, parse_ref, validate_name
from .._format.records import (
    ArtifactInfo,
    EdgeRecord,
    LeaseRecord,
    Record,
    RootRecord,
    UnreadableRecord,
    UsedByRecord,
    dumps,
    isoformat,
    loads,
    now,
    parse_time,
    writer_info,
)
from .._format.seqlog import SeqLog, settled
from .._storage import ChangedWhileReading, Storage, open_storage
from . import hashcache
from .gc import GcFloor, gc_floor, outlast_gc, settle_with_gc
from .labels import Labels, initial_state
from .sources import AskStorage, BlobCheck, Referenced, Source
from .version import ArtifactVersion

logger = logging.getLogger("modelshelf")

T = TypeVar("T")

_SHELF_ID_RE = re.compile(r"[0-9a-f]{32}")
#: How many renames of one name are followed before the chain is taken for a loop.
MAX_RENAMES = 64


class Repository:
    """The versions, aliases, labels, blobs and manifests of one shelf.

    Args:
        url: a local path or fsspec URL.
        storage_options: passed to the fsspec filesystem.
        facade: the public object that owns this repository (a ``Shelf``); the versions
            handed out return it as their ``.shelf``.
    """

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, *, facade: Any = None
    ) -> None:
        self.storage = open_storage(url, storage_options)
        self.url = self.storage.url
        self.facade = facade
        self.labels = Labels(self.storage)
        self._root: Record | None = None
        self._init_lock = threading.Lock()
        self._infos: dict[str, Record] = {}  # artifact.json records that decoded, by name
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # see _beside
        self._seen_blobs: dict[str, int] = {}  # see blobs_there
        self._committing = threading.local()  # the gc floor of this thread's commit

    # -- the root record -----------------------------------------------------------------
    def info(self, *, create: bool) -> Record | None:
        """The shelf's root record (created first when ``create``), or None if it has none."""
        if self._root is not None:
            return self._root
        with self._init_lock:
            if self._root is not None:  # read by another thread meanwhile
                return self._root
            info = self._root_record(create)
            if info is None:
                return None
            if not (isinstance(info.get("id"), str) and _SHELF_ID_RE.fullmatch(info["id"])):
                raise IntegrityError(
                    f"The shelf record {self.storage.describe(ROOT_RECORD)} has a malformed id "
                    f"{info.get('id')!r:.80} (32 hex digits expected); it names the shelf's "
                    "folder in the download cache, so it is refused."
                )
            if not isinstance(info.get("format"), int):
                raise IntegrityError(
                    f"The shelf record {self.storage.describe(ROOT_RECORD)} has no format number."
                )
            if int(info.get("format", 0)) > FORMAT_VERSION:
                raise ConflictError(
                    f"The shelf {self.url!r} uses format {info['format']}, newer than this "
                    f"modelshelf understands ({FORMAT_VERSION}). Upgrade modelshelf."
                )
            self._root = info
            return info

    def _root_record(self, create: bool) -> Record | None:
        """The root record as stored (written first when ``create``), or None.

        Where records are written in place (no hard links, a generic filesystem), another
        writer's root record can be met half-written: it is waited for until it decodes, or
        until it is settled, when it was torn by a crash (UnreadableRecord, as before)."""
        first_seen: dict[str, tuple[float, int]] = {}
        while True:
            data = self.storage.try_read(ROOT_RECORD)
            if data is None and create:
                record: RootRecord = {
                    "format": FORMAT_VERSION,
                    "id": uuid.uuid4().hex,
                    "created_at": isoformat(now()),
                    "created_by": writer_info(),
                }
                self.storage.create(ROOT_RECORD, dumps(record))
                data = self.storage.read(ROOT_RECORD)  # another process may have won
            if data is None:
                return None
            try:
                return loads(data, self.storage.describe(ROOT_RECORD))
            except UnreadableRecord:
                if settled(self.storage, ROOT_RECORD, first_seen):
                    raise
                time.sleep(0.05)

    @property
    def id(self) -> str:
        info = self.info(create=True)
        assert info is not None
        return str(info["id"])

    # -- names ---------------------------------------------------------------------------
    def type_of(self, name: str) -> str | None:
        """The type of the artifact ``name``, or None if it was never logged."""
        info = self.artifact_info(name)
        return str(info["type"]) if info else None

    def check_live(self, name: str) -> None:
        """NotFoundError if ``name`` was renamed: it says where the artifact went. A tombstone
        still being written (in place, on a generic filesystem) or torn does not count yet:
        the name still works (``current_name``), and a rename of it meets the tombstone at
        its own create, waits for it, and gives way."""
        if self.labels.try_read(ArtifactKeys(name).renamed) is not None:
            went = self.current_name(name)
            if went != name:
                raise NotFoundError(
                    f"{name!r} was renamed to {went!r}; use the new name.", ref=name
                )

    def current_name(self, name: str) -> str:
        """The name ``name`` goes by now: itself, or where its renames led."""
        seen = [name]
        while True:
            key = ArtifactKeys(seen[-1]).renamed
            data = self.labels.try_read(key)
            if data is None:
                return seen[-1]
            try:
                target = validate_name(loads(data, self.storage.describe(key)).get("to"))
            except UnreadableRecord:  # a rename in progress, or torn: the name still works
                return seen[-1]
            except InvalidReferenceError:
                raise IntegrityError(
                    f"The rename record {self.storage.describe(key)} names no valid artifact; "
                    "the shelf was edited by hand or tampered with."
                ) from None
            if target in seen or len(seen) > MAX_RENAMES:
                raise IntegrityError(
                    f"The renames of {name!r} go round in a circle ({' -> '.join(seen)}); the "
                    "shelf was edited by hand or tampered with."
                )
            seen.append(target)

    def artifact_info(self, name: str, wait: bool = False, *, fresh: bool = False) -> Record | None:
        """``artifact.json`` of ``name``. One that does not decode (being written, or torn by a
        crash) reads as the type its versions were committed with, or as absent if none was;
        with ``wait``, a fresh one is waited for, and a torn one is written again. ``fresh``:
        read the shelf, not the listing in use (after a create found the key taken).

        One that decodes is kept: it is written once and never changed."""
        known = self._infos.get(name)
        if known is not None:
            return dict(known)
        key = ArtifactKeys(name).info
        first_seen: dict[str, tuple[float, int]] = {}
        while True:
            data = self.storage.try_read(key) if fresh else self.labels.try_read(key)
            if data is None:
                return None
            try:
                info = loads(data, self.storage.describe(key))
                self._infos[name] = dict(info)
                return info
            except UnreadableRecord:
                if wait and not settled(self.storage, key, first_seen):
                    time.sleep(0.05)
                    continue
            versions = self.labels.versions_log(name).all()
            if not versions:
                return None
            rebuilt = info_from_commit(name, versions[0][1])
            if wait:  # write again what the torn record had to say
                self.storage.replace(key, dumps(rebuilt))
            return dict(rebuilt)

    def claim_name(self, name: str, type: str) -> None:
        """Make ``name`` an artifact of ``type``; ConflictError if it is one of another type,
        NotFoundError if it was renamed."""
        self.check_live(name)
        key = ArtifactKeys(name).info
        existing = self.artifact_info(name, wait=True)
        if existing is None:
            record: ArtifactInfo = {"name": name, "type": type, "created_at": isoformat(now())}
            if self.storage.create(key, dumps(record)):
                self.labels.claimed(name)
                return
            existing = self.artifact_info(name, wait=True, fresh=True)  # another's, meanwhile
            if existing is None:  # torn by a writer that crashed before its first version
                self.storage.replace(key, dumps(record))
                return
        if existing["type"] != type:
            raise ConflictError(
                f"{name!r} is an artifact of type {existing['type']!r}, not {type!r}. "
                f"Log it with type={existing['type']!r} or choose another name."
            )

    # -- blobs ---------------------------------------------------------------------------
    def blobs_there(self) -> BlobCheck:
        """Which blobs the shelf has, for the stores of the commit running in this thread
        (usable from other threads).

        On an object store, a blob this repository saw there, or stored, during a commit
        whose gc floor was quiet (every pass over) is taken as there without a request while
        the gc log's head is still the same: only a gc pass frees blobs, and it enters the
        log before it lists anything. Elsewhere, and outside a commit, the storage is asked.
        A commit that finds a pass started since its floor checks every blob again
        (``settle_with_gc``), asking the storage."""
        floor: GcFloor | None = getattr(self._committing, "floor", None)
        if floor is None or not floor.quiet or not self.storage.lists_heads:
            return AskStorage(self.storage)
        return _SeenBlobs(self.storage, self._seen_blobs, floor.head)

    def put_file(self, path: Path, known: str | None = None) -> tuple[str, int]:
        """Store a local file as a blob (skipped when its bytes are there); (hex, size).
        ``known``: its sha256 as hashed a moment ago (what is sent is checked against it)."""
        st = os.stat(path)
        cached = known or hashcache.lookup(path, st)
        if cached is None and self.storage.hash_before_upload:
            cached = hashcache.file_digest(path)  # hash first: skip uploads of known bytes
        unasked = st.st_size <= self.storage.upload_unasked_bytes
        there = self.blobs_there()
        if cached is not None and not unasked and there(cached):
            return cached, st.st_size
        changed = ConflictError(f"{str(path)!r} changed while it was being stored; log it again.")
        try:
            hexdigest = self.storage.upload(path, blob_key, cached)
        except ChangedWhileReading:
            raise changed from None
        after = os.stat(path)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise changed
        hashcache.remember(path, hexdigest, st)
        there.stored(hexdigest)
        return hexdigest, st.st_size

    # -- committing ----------------------------------------------------------------------
    def commit(
        self,
        name: str,
        type: str,
        files: Mapping[str, Source | FileEntry],
        fields: dict[str, Any],
        *,
        aliases: list[str],
        run_id: str | None,
        created_at: str | None = None,
    ) -> ArtifactVersion:
        """Store ``files`` and commit them as the next version of ``name``: the one commit
        path of log_artifact, log_model, copy and the checkpoint writer.

        ``fields`` are the commit record's description, metadata and tags (and, for a copy,
        where it came from). Content identical to an existing version of ``name`` commits
        nothing: that version is returned, with the tags and aliases applied.
        """
        self.info(create=True)
        sources = {
            rel: Referenced(item) if isinstance(item, FileEntry) else item
            for rel, item in sorted(files.items())
        }
        # On an object store, when every file can say what it will store without storing it
        # (plain files are hashed before they are sent anyway), the lease is written before
        # the gc log is read: one read of the gc log then serves as floor and as settling.
        planned = self._plan(sources) if self.storage.lists_heads else None
        # Until the commit record is written, the name's records are read as of one listing
        # (on an object store: its head, its name and the digest hint in one request, sent
        # beside the read of the gc log).
        floor = self._beside(lambda: gc_floor(self.storage)) if planned is None else None
        with self.labels.listed(name), self._in_commit():
            self.claim_name(name, type)
            entries: dict[str, FileEntry] = {}
            if floor is not None:
                gc_from = self._committing.floor = floor()  # before any blob is looked at
                for rel, source in sources.items():
                    entries[rel] = source.store(self)
            else:
                assert planned is not None
                entries = planned
            by_hex: dict[str, Source] = {}
            for rel, source in sources.items():
                by_hex.update(dict.fromkeys(entries[rel].blob_hexes(), source))
            manifest = Manifest(entries)
            digest = manifest.digest()
            existing = self._identical(name, digest)
            if existing is not None:
                logger.warning(
                    "%s holds the same content as this log; no new version was created.",
                    existing.ref,
                )
                if fields.get("tags"):
                    existing.add_tags(*fields["tags"])
                if aliases:
                    self.labels.move_aliases(
                        name, dict.fromkeys(aliases, existing.version), run_id=run_id
                    )
                return self.get(existing.ref, follow_renames=True)
            lease = uuid.uuid4().hex
            blobs = manifest.blob_hexes()
            manifest_bytes = manifest.to_bytes()
            manifest_hex = hashlib.sha256(manifest_bytes).hexdigest()  # its key, as Manifest.sha256
            lease_record: LeaseRecord = {
                "at": isoformat(now()), "by": writer_info(), "blobs": sorted(blobs),
                "manifests": [manifest_hex],
            }  # fmt: skip

            def write_lease() -> None:
                self.storage.replace(lease_key(lease), dumps(lease_record), durable=False)

            def ensure() -> None:
                """Everything the commit references is there (stored again if gc took it)."""
                for hexdigest in sorted(blobs):
                    if not self.storage.exists(blob_key(hexdigest)):
                        by_hex[hexdigest].store(self)
                if not self.storage.exists(manifest_key(manifest_hex)):
                    self._put_manifest(manifest_hex, manifest_bytes)

            wrote_lease: Callable[[], None] = lambda: None  # noqa: E731
            if planned is not None:
                write_lease()  # before the gc log is read: see gc
            try:
                if planned is not None:
                    gc_from = self._committing.floor = gc_floor(self.storage)
                    put_manifest = self._beside(
                        lambda: self._put_manifest(manifest_hex, manifest_bytes)
                    )
                    for rel, source in sources.items():
                        if source.store(self, planned[rel]) != planned[rel]:
                            raise ConflictError(
                                f"{rel!r} changed while it was being stored; log it again."
                            )
                    put_manifest()
                    self._committing.floor = None  # from here on, every blob is asked for
                    outlast_gc(self.storage, gc_from, ensure)
                else:
                    wrote_lease = self._beside(write_lease)
                    self._put_manifest(manifest_hex, manifest_bytes)  # beside the lease: see gc
                    wrote_lease()
                    self._committing.floor = None  # from here on, every blob is asked for
                    settle_with_gc(self.storage, gc_from.floor, ensure)
                record = {
                    "name": self.labels.stored_as(name),  # its folder's: the same after a rename
                    "type": type,
                    "digest": digest,
                    "manifest": manifest_hex,
                    "size": manifest.size,
                    "file_count": len(manifest.files),
                    "created_at": created_at or isoformat(now()),
                    "created_by": writer_info(),
                    "run_id": run_id,
                    **fields,
                }
                version, _ = self.labels.versions_log(name).append(
                    lambda n, _head: {**record, "version": n}
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    wrote_lease()  # not to delete it before it is written
                self.storage.delete(lease_key(lease))
                raise
        dropped = self._beside(lambda: self.storage.delete(lease_key(lease)))
        try:
            return self._after_commit(name, version, record, digest, aliases, run_id)
        finally:
            dropped()

    def _plan(self, sources: Mapping[str, Source]) -> dict[str, FileEntry] | None:
        """What each source will store, if every one can tell it without storing; else
        None."""
        planned = {}
        for rel, source in sources.items():
            entry = source.plan(self)
            if entry is None:
                return None
            planned[rel] = entry
        return planned

    @contextlib.contextmanager
    def _in_commit(self) -> Iterator[None]:
        """A commit runs in this block: ``blobs_there`` goes by its gc floor once set."""
        self._committing.floor = None
        try:
            yield
        finally:
            self._committing.floor = None

    def _beside(self, fn: Callable[[], T]) -> Callable[[], T]:
        """Start ``fn`` now and return what waits for its result. On an object store it runs
        in a thread, beside the requests that follow; elsewhere it runs at once (a request
        to a local disk costs less than a thread)."""
        if not self.storage.lists_heads:
            result = fn()
            return lambda: result
        with self._init_lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(4, "modelshelf-requests")
        return self._pool.submit(fn).result

    def _after_commit(
        self,
        name: str,
        version: int,
        record: Record,
        digest: str,
        aliases: list[str],
        run_id: str | None,
    ) -> ArtifactVersion:
        """The digest hint (written beside the rest), lineage edge and aliases of a version
        just committed, and the version."""

        def hint() -> None:
            with contextlib.suppress(OSError):
                key = self.labels.keys(name).digest(digest)
                self.storage.replace(key, str(version).encode(), durable=False)

        hinted = self._beside(hint)
        try:
            if run_id is not None:
                self.record_edge(run_id, "outputs", name, version)
            if aliases:
                self.labels.move_aliases(name, dict.fromkeys(aliases, version), run_id=run_id)
            return self._committed(name, version, {**record, "version": version}, aliases)
        finally:
            hinted()

    def _committed(
        self, name: str, version: int, record: Record, aliases: list[str]
    ) -> ArtifactVersion:
        """The version a commit just wrote, as of its commit: from the record it wrote, no
        labels changed yet, the aliases it moved and ``latest`` (it was the newest when its
        record was created). A rename or a newer version a moment later is not looked for: no
        lookup could rule them out one moment after it anyway, and it would cost a request."""
        return self._version(
            name, version, record, dict(initial_state(record)), dict.fromkeys(aliases, version),
            version,
        )  # fmt: skip

    def _put_manifest(self, hexdigest: str, data: bytes) -> None:
        """Store a manifest under its digest, unless it is there whole already."""
        key = manifest_key(hexdigest)
        if self.storage.create(key, data) or not self.storage.creates_can_tear:
            return
        existing = self.storage.try_read(key)  # being written by another writer, or torn
        if existing is None or hashlib.sha256(existing).hexdigest() != hexdigest:
            self.storage.replace(key, data)  # the bytes are fixed by the key: either is right

    def _identical(self, name: str, digest: str) -> ArtifactVersion | None:
        data = self.labels.try_read(self.labels.keys(name).digest(digest))
        if data is None:
            return None
        try:
            version = self.get(f"{name}:v{int(data)}")
        except (NotFoundError, ValueError):
            return None
        return version if version.digest == digest else None

    # -- lineage edges -------------------------------------------------------------------
    def record_edge(self, run_id: str, kind: str, name: str, version: int) -> None:
        """Append an input or output edge of a run (and the reverse index for inputs)."""
        edge: EdgeRecord = {"name": name, "version": version, "at": isoformat(now())}
        SeqLog(self.storage, RunKeys(run_id).edges(kind)).append(lambda _n, _h: dict(edge))
        if kind == "inputs":
            used: UsedByRecord = {"run_id": run_id, "at": edge["at"]}
            self.storage.create(self.labels.keys(name).used_by_entry(version, run_id), dumps(used))

    def used_by(self, name: str, version: int) -> list[str]:
        """The ids of the runs that used ``name:v<version>`` as an input."""
        entries = self.storage.listdir(self.labels.keys(name).used_by(version))
        return [entry.removesuffix(".json") for entry in entries]

    # -- reading -------------------------------------------------------------------------
    def get(self, ref: str, *, follow_renames: bool = False) -> ArtifactVersion:
        """The version ``ref`` names (see ``Shelf.get``). A renamed name raises NotFoundError
        saying where it went, or with ``follow_renames`` (for lineage edges recorded under
        the old name) resolves to the new one."""
        parsed = parse_ref(ref)
        if follow_renames:
            self.info(create=False)
            parsed = dataclasses.replace(parsed, name=self.current_name(parsed.name))
        with self._reading(parsed.name):
            if not follow_renames:
                self.check_live(parsed.name)
            self.labels.prefetch(
                parsed.name,
                [] if parsed.version is None else [parsed.version],
                newest=parsed.alias == LATEST,
                aliases=_names_alias(parsed),
            )
            return self._get(parsed, ref)

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        """Read ``name``'s records as of one listing (``Labels.listed``), the root record
        checked first: on an object store, read beside the listing."""
        root = None if self._root is not None else self._beside(lambda: self.info(create=False))
        with self.labels.listed(name):
            if root is not None:
                root()
            yield

    def _get(self, parsed: Ref, ref: str) -> ArtifactVersion:
        # The alias map only when the ref names an alias: a version found otherwise reads
        # its aliases when first asked for them.
        aliases = self.labels.alias_map(parsed.name) if _names_alias(parsed) else None
        # Which version is latest: for another ref, the listing often tells it unread.
        live = None if parsed.alias == LATEST else self.labels.live_head(parsed.name)
        newest = None if live is not None else self._latest(parsed.name)
        latest = live if live is not None else None if newest is None else newest[0]
        log = self.labels.versions_log(parsed.name)
        head = log.head()[0] if latest is None else latest
        if latest is None and not (parsed.version is not None and parsed.version <= head):
            if head >= 0:
                raise NotFoundError(
                    f"Every version of {parsed.name!r} (v0 to v{head}) was deleted; log a new "
                    "one to use the name again.",
                    ref=str(ref),
                )
            raise self.missing_artifact(parsed)
        if parsed.version is not None:
            number = parsed.version
        elif parsed.alias == LATEST:
            assert latest is not None  # else refused above
            number = latest
        elif aliases is not None and parsed.alias in aliases:
            number = aliases[parsed.alias]
        else:
            shown = ", ".join(sorted({LATEST, *(aliases or {})})) or "none"
            raise NotFoundError(
                f"{parsed.name!r} has no alias {parsed.alias!r}. Its aliases: {shown}; its "
                f"newest version is v{latest}.",
                ref=str(ref),
            )
        # an alias's version, with its state
        self.labels.prefetch(parsed.name, [number], newest=live is None, aliases=False)
        record = log.get(number)
        if newest is not None and number == newest[0]:
            state: Record | None = newest[1]  # read just now, by _latest
        else:
            state = self.labels.state(parsed.name, number, record) if record else None
        if record is None or state is None or state.get("deleted"):
            gone = "was deleted" if record is not None else "does not exist"
            if state and state.get("quarantined"):
                gone = f"was set aside by `modelshelf fsck --repair` ({state['quarantined']})"
            raise NotFoundError(
                f"{parsed.name}:v{number} {gone}. "
                + (
                    f"The newest version of {parsed.name!r} is v{latest}; aliases: "
                    f"{', '.join(sorted({LATEST, *self.labels.alias_map(parsed.name)}))}."
                    if latest is not None
                    else f"No version of {parsed.name!r} is left."
                ),
                ref=str(ref),
            )
        return self._version(parsed.name, number, record, state, aliases, latest)

    def _version(
        self,
        name: str,
        n: int,
        record: Record,
        state: Record,
        aliases: dict[str, int] | None,
        latest: int | None,
    ) -> ArtifactVersion:
        """The version ``name:v<n>``; its aliases read when first asked for, if ``aliases``
        is None."""
        check_commit_record(self.labels.stored_as(name), n, record)
        if aliases is None:  # read later, as of the listing in use now (if any)
            later = self.labels.alias_map_later(name)
            return ArtifactVersion(
                self, name, record, state, None, latest=n == latest, alias_map=later
            )
        names = [a for a, v in aliases.items() if v == n]
        if n == latest:
            names.append(LATEST)
        return ArtifactVersion(self, name, record, state, names)

    def missing_artifact(self, parsed: Ref) -> NotFoundError:
        names = self.artifacts()
        near = [n for n in names if parsed.basename.lower() in n.lower()] or names
        listing = ", ".join(near[:10]) if near else "the shelf is empty"
        return NotFoundError(
            f"No artifact named {parsed.name!r} on {self.url}. Artifacts: {listing}"
            + (f" (and {len(near) - 10} more)" if len(near) > 10 else "")
            + ".",
            ref=str(parsed),
        )

    def versions(self, name: str) -> list[ArtifactVersion]:
        """Every version of ``name`` that was not deleted, oldest first."""
        validate_name(name)
        with self._reading(name):
            self.check_live(name)
            return self._versions(name)

    def _versions(self, name: str) -> list[ArtifactVersion]:
        log = self.labels.versions_log(name)
        gone = self.labels.marked_deleted(name)  # neither their records nor states are read
        records = log.all(skip=gone)
        if not records and not log.numbers():
            raise self.missing_artifact(Ref(name))
        aliases = self.labels.alias_map(name)
        states = self.labels.all_states(name, skip=gone)
        live = [(n, rec, states.get(n, dict(initial_state(rec)))) for n, rec in records]
        live = [(n, rec, st) for n, rec, st in live if not st.get("deleted")]
        latest = live[-1][0] if live else None
        return [self._version(name, n, rec, st, aliases, latest) for n, rec, st in live]

    def summary(self, name: str) -> Summary:
        """How many versions of ``name`` are left and its newest (what ``modelshelf ls``
        shows), reading neither every version nor every state: on an object store, one
        listing and the newest version's record, and the state of any version changed but
        not marked deleted."""
        validate_name(name)
        with self._reading(name):
            self.check_live(name)
            log = self.labels.versions_log(name)
            gone = self.labels.marked_deleted(name)
            states = self.labels.all_states(name, skip=gone)
            live = [
                n for n in log.numbers() if n not in gone and not states.get(n, {}).get("deleted")
            ]
            for n in reversed(live):
                record = log.readable(n)
                if record is not None:
                    check_commit_record(self.labels.stored_as(name), n, record)
                    return Summary(len(live), n, record)
            return Summary(0, None, None)

    def folders(self, project: str | None = None) -> list[str]:
        """The name of every artifact folder, renamed names included, sorted."""
        projects = self.storage.listdir(ARTIFACTS)
        if project is not None:
            validate_name(project)
            projects = [project] if project in projects else []
        return sorted(
            name_from_folders(p, base)
            for p in projects
            for base in self.storage.listdir(project_folder(p))
        )

    def stored_names(self) -> list[str]:
        """The names whose folders hold versions (a renamed artifact's first name): what gc
        walks. A rename pointer that cannot be followed is left out: no name reaches what
        its folder holds (fsck reports it)."""
        names = set()
        for name in self.folders():
            with contextlib.suppress(IntegrityError):
                names.add(self.labels.stored_as(name))
        return sorted(names)

    def artifacts(self, type: str | None = None, project: str | None = None) -> list[str]:
        """Names of the artifacts on the shelf, sorted; optionally of one type or project.
        A name that was renamed is left out (its new name is listed)."""
        self.info(create=False)
        names = self.folders(project)
        gone = self.storage.read_many([ArtifactKeys(n).renamed for n in names])
        names = [n for n in names if ArtifactKeys(n).renamed not in gone]
        if type is None:
            return sorted(names)
        keys = {n: ArtifactKeys(n).info for n in names}
        infos = self.storage.read_many(list(keys.values()))
        types = {}
        for n, key in keys.items():
            if key in infos:
                try:
                    types[n] = loads(infos[key], self.storage.describe(key)).get("type")
                except UnreadableRecord:
                    types[n] = self.type_of(n)
        return sorted(n for n, t in types.items() if t == type)

    def latest(self, name: str) -> int | None:
        """The newest version of ``name`` that was not deleted, or None."""
        found = self._latest(name)
        return None if found is None else found[0]

    def _latest(self, name: str) -> tuple[int, Record] | None:
        """The newest version of ``name`` that was not deleted, with its labels."""
        log = self.labels.versions_log(name)
        n = log.head_number()
        # Deletion markers spare reading states where a listing shows them at no cost; on
        # local disk a live head (the usual case) needs no listing of them.
        gone = self.labels.marked_deleted(name) if log.listing is not None else set()
        while n >= 0:
            record = None if n in gone else log.readable(n)  # None: also being written, or torn
            if record is not None:
                state = self.labels.state(name, n, record)
                if not state.get("deleted"):
                    return n, state
            n -= 1
        return None

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - manifests are immutable
    def manifest(self, hexdigest: str) -> Manifest:
        """The manifest stored under ``hexdigest`` (checked before it names a key; kept once
        checked, as it is named by its digest: gc reads every version's)."""
        if not HEX_RE.fullmatch(hexdigest):
            raise IntegrityError(f"Malformed manifest digest {hexdigest!r} in a commit record.")
        key = manifest_key(hexdigest)
        try:
            data = self.storage.read(key)
        except FileNotFoundError:
            raise IntegrityError(f"The manifest {self.storage.describe(key)} is missing.") from None
        if hashlib.sha256(data).hexdigest() != hexdigest:
            raise IntegrityError(
                f"The manifest {self.storage.describe(key)} does not match its digest: it was "
                "changed after it was written."
            )
        return Manifest.from_bytes(data, self.storage.describe(key))


class Summary(NamedTuple):
    """``Repository.summary``: how many versions are left, and the newest one's number and
    commit record (None when none is left)."""

    versions: int
    latest: int | None
    record: Record | None


def info_from_commit(name: str, record: Record) -> ArtifactInfo:
    """``artifact.json`` as the first commit record of ``name`` tells it (when the record
    itself was torn)."""
    return {"name": name, "type": str(record["type"]), "created_at": record["created_at"]}


def check_commit_record(name: str, n: int, record: Record) -> None:
    """A commit record read from the shelf holds what its key says, in the shapes readers use:
    its name, number, digests and run id name files and folders, so they are checked first."""
    ref = f"{name}:v{n}"

    def bad(what: str) -> IntegrityError:
        return IntegrityError(
            f"The commit record of {ref} {what}; the shelf was edited by hand or tampered with.",
            ref=ref,
        )

    if record.get("name") != name or record.get("version") != n:
        raise bad(f"names {record.get('name')!r:.80} v{record.get('version')!r:.20}")
    digest = record.get("digest")
    if not (
        isinstance(digest, str) and digest.startswith("sha256:") and HEX_RE.fullmatch(digest[7:])
    ):
        raise bad(f"has a malformed content digest {digest!r:.80}")
    if not (isinstance(record.get("manifest"), str) and HEX_RE.fullmatch(record["manifest"])):
        raise bad(f"has a malformed manifest digest {record.get('manifest')!r:.80}")
    if record.get("run_id") is not None and not is_run_id(record["run_id"]):
        raise bad(f"names a malformed run id {record['run_id']!r:.80}")
    size = record.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise bad(f"has a malformed size {size!r:.40}")
    if not isinstance(record.get("type"), str) or not isinstance(record.get("created_at"), str):
        raise bad("has no type or creation time")
    try:
        parse_time(record["created_at"])
    except ValueError:
        raise bad(f"has a malformed creation time {record['created_at']!r:.40}") from None
    for key, kind in (("metadata", dict), ("tags", list)):
        if not isinstance(record.get(key, kind()), kind):
            raise bad(f"has {key} that are not a {kind.__name__}")


class _SeenBlobs:
    """A ``BlobCheck`` that takes as there the blobs seen there while the gc log's head was
    ``head`` with every pass over (see ``Repository.blobs_there``), and asks about others."""

    LIMIT = 100_000  # blobs remembered; past it, all are forgotten (and asked about again)

    def __init__(self, storage: Storage, seen: dict[str, int], head: int) -> None:
        self.storage, self.seen, self.head = storage, seen, head

    def __call__(self, hexdigest: str) -> bool:
        if self.seen.get(hexdigest) == self.head:
            return True
        there = self.storage.exists(blob_key(hexdigest))
        if there:
            self.stored(hexdigest)
        return there

    def stored(self, hexdigest: str) -> None:
        if len(self.seen) >= self.LIMIT:
            self.seen.clear()
        self.seen[hexdigest] = self.head


def _names_alias(parsed: Ref) -> bool:
    """Whether ``parsed`` names a version by an alias other than ``latest``."""
    return parsed.version is None and parsed.alias != LATEST
