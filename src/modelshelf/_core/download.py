"""Downloads into the local cache: verified blobs, and versions materialised from them.

The cache's layout is ``CachePaths`` (``_format.layout``), under ``$MODELSHELF_CACHE``
(default ``~/.cache/modelshelf``).

Versions that share a file share its disk. Every byte fetched from a shelf is hashed on the
way in; ``verify=True`` re-checks cached files too (cheaply, by their stat data, and by
re-hashing whatever changed since).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import mmap
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._config import cache_dir
from .._errors import IntegrityError
from .._format.layout import CachePaths, blob_key
from .._format.manifest import FileEntry, safe_join
from .._progress import shown
from .._storage import Storage
from .._storage.hashing import hash_chunks, write_hashed
from . import hashcache, references

if TYPE_CHECKING:
    from .repository import Repository
    from .version import ArtifactVersion


def _paths() -> CachePaths:
    return CachePaths(cache_dir())


def blob_path(hexdigest: str) -> Path:
    return _paths().blob(hexdigest)


def version_dir(repo: Repository, version: ArtifactVersion) -> Path:
    return _paths().version_dir(repo.id, version.name, version.version)


def _tmp_path() -> Path:
    tmp = _paths().tmp
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp / f"{uuid.uuid4().hex}.part"


def _source(
    storage: Storage, version: ArtifactVersion, rel: str, entry: FileEntry
) -> Iterator[bytes]:
    """The bytes of one file, from the shelf's blobs or from the referenced location."""
    if entry.ref is not None:
        return references.fetch(rel, entry)
    if entry.chunks:
        return _checked_chunks(storage, version, rel, entry)
    h = entry.hex or ""
    if not storage.exists(blob_key(h)):
        raise _missing(storage, version, rel, h)
    return storage.iter_chunks(blob_key(h), entry.size)


def _missing(
    storage: Storage, version: ArtifactVersion, rel: str, hexdigest: str
) -> IntegrityError:
    return IntegrityError(
        f"{version.ref}: the bytes of {rel!r} are missing from the shelf "
        f"({storage.describe(blob_key(hexdigest))}).",
        ref=version.ref,
        files=[rel],
    )


def _checked_chunks(
    storage: Storage, version: ArtifactVersion, rel: str, entry: FileEntry
) -> Iterator[bytes]:
    """The bytes of a file stored in chunks, each checked against its own digest and size
    as it goes by (so a damaged chunk is named, and nothing after it is used). From an object
    store, the next chunks of up to ``PREFETCH_CHUNK`` bytes are fetched while one is used
    (``REMOTE_FETCHES`` at once, at most ``PREFETCH_BYTES`` held); larger ones stream."""
    if not storage.hash_before_upload:
        for i in range(len(entry.chunks)):
            yield from _streamed_chunk(storage, version, rel, entry, i)
        return
    pending: collections.deque[tuple[Future[bytes], int]] = collections.deque()
    held, i, count = 0, 0, len(entry.chunks)
    with ThreadPoolExecutor(REMOTE_FETCHES, thread_name_prefix="modelshelf-fetch") as pool:
        try:
            while i < count or pending:
                while i < count and len(pending) < REMOTE_FETCHES:
                    size = entry.chunks[i][1]
                    if size > PREFETCH_CHUNK or (pending and held + size > PREFETCH_BYTES):
                        break
                    fetched = pool.submit(_fetched_chunk, storage, version, rel, entry, i)
                    pending.append((fetched, size))
                    held, i = held + size, i + 1
                if pending:
                    future, size = pending.popleft()
                    held -= size
                    yield future.result()
                else:  # a large chunk: streamed, in its turn
                    yield from _streamed_chunk(storage, version, rel, entry, i)
                    i += 1
        finally:
            for future, _ in pending:
                future.cancel()


#: From an object store: chunks fetched at once, the largest fetched ahead (larger ones stream
#: in their turn), and the most bytes held ahead of their use.
REMOTE_FETCHES = 8
PREFETCH_CHUNK = 64 * 2**20
PREFETCH_BYTES = 256 * 2**20


def _fetched_chunk(
    storage: Storage, version: ArtifactVersion, rel: str, entry: FileEntry, i: int
) -> bytes:
    return b"".join(_streamed_chunk(storage, version, rel, entry, i))


def _streamed_chunk(
    storage: Storage, version: ArtifactVersion, rel: str, entry: FileEntry, i: int
) -> Iterator[bytes]:
    """The bytes of chunk ``i`` as they are read; IntegrityError once they prove wrong."""
    check = _ChunkCheck(storage, version, rel, entry, i)
    try:
        for buf in storage.iter_chunks(check.key, check.size):
            if not check.add(buf):
                break
            yield buf
    except FileNotFoundError:
        raise _missing(storage, version, rel, check.hex) from None
    check.done()


class _ChunkCheck:
    """The digest and size of chunk ``i`` of ``entry``, checked as its bytes go by."""

    def __init__(
        self, storage: Storage, version: ArtifactVersion, rel: str, entry: FileEntry, i: int
    ) -> None:
        self.storage, self.version, self.rel, self.entry, self.i = storage, version, rel, entry, i
        self.digest, self.size = entry.chunks[i]
        self.hex = self.digest.split(":", 1)[1]
        self.key = blob_key(self.hex)
        self.hash, self.n = hashlib.sha256(), 0

    def add(self, buf: bytes | memoryview) -> bool:
        """Take ``buf`` into account; False once the chunk is longer than it should be."""
        self.hash.update(buf)
        self.n += len(buf)
        return self.n <= self.size

    def done(self) -> None:
        """IntegrityError naming the chunk, unless its bytes were all there and right."""
        n, size, got = self.n, self.size, self.hash.hexdigest()
        if n == size and got == self.hex:
            return
        raise IntegrityError(
            f"{self.version.ref}: chunk {self.i + 1} of {len(self.entry.chunks)} of "
            f"{self.rel!r} is corrupted ({self.storage.describe(self.key)} should hold {size} "
            f"bytes with {self.digest}; read {'more than ' if n > size else ''}{n} bytes"
            f"{'' if n > size else f' with sha256:{got}'}).",
            ref=self.version.ref,
            files=[self.rel],
        )


def _into_cache(chunks: Iterator[bytes], check: Callable[[str, int], None]) -> Path:
    """Write ``chunks`` into the blob cache under their sha256, once ``check(hex, size)``
    accepts them (it raises IntegrityError otherwise, and nothing is kept)."""
    tmp = _tmp_path()
    try:
        with open(tmp, "wb") as f:
            hexdigest, size = write_hashed(chunks, f)
        check(hexdigest, size)
        dest = blob_path(hexdigest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        st = os.stat(tmp)
        os.replace(tmp, dest)
        hashcache.remember(dest, hexdigest, st, written_by_us=True)
        hashcache.trust_blob(dest, hexdigest, st)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def _fetch(storage: Storage, version: ArtifactVersion, rel: str, entry: FileEntry) -> Path:
    """Download one file into the blob cache, checking its size and digest on the way."""

    def check(hexdigest: str, size: int) -> None:
        if (entry.digest and entry.hex != hexdigest) or size != entry.size:
            raise IntegrityError(
                f"{version.ref}: {rel!r} is corrupted: expected {entry.size} bytes with "
                f"{entry.digest}, read {size} bytes with sha256:{hexdigest}.",
                ref=version.ref,
                files=[rel],
            )

    return _into_cache(_source(storage, version, rel, entry), check)


def _cached_blob(
    storage: Storage,
    version: ArtifactVersion,
    rel: str,
    entry: FileEntry,
    verify: bool,
    *,
    trust_checked: bool = False,
) -> Path:
    """A verified cached copy of one file's bytes, fetched if missing or damaged.

    ``verify`` hashes a cached blob again, unless ``trust_checked`` and the blob is, by its
    stat data, the one checked when it entered the cache (how loads read it)."""
    if entry.hex is None:  # a reference recorded without checksum: fetch, check size and ETag
        return _fetch(storage, version, rel, entry)
    cached = blob_path(entry.hex)
    if cached.exists():
        if not verify or (trust_checked and hashcache.trusted_blob(cached, entry.hex)):
            return cached
        if hashcache.verify_blob(cached, entry.hex):
            return cached
        cached.unlink(missing_ok=True)  # damaged in the cache: fetch it again
    return _fetch(storage, version, rel, entry)


def _place(blob: Path, dest: Path, *, link: bool) -> None:
    """Put ``blob``'s bytes at ``dest`` atomically: a hard link into the cache, else a copy."""
    if dest.exists() and link and os.path.samefile(blob, dest):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
    try:
        linked = False
        if link:
            with contextlib.suppress(OSError):
                os.link(blob, tmp)
                linked = True
        if not linked:
            shutil.copyfile(blob, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _targets(root: Path, files: list[str]) -> dict[str, Path]:
    """Check every manifest path before anything is written (a hostile shelf writes nothing)."""
    return {rel: safe_join(root, rel) for rel in files}


def download(
    repo: Repository, version: ArtifactVersion, root: Path | None, *, verify: bool
) -> Path:
    """The version's files in ``root`` (default: its folder in the cache), checked."""
    into_cache = root is None
    target = version_dir(repo, version) if root is None else root
    entries = version.manifest.files
    targets = _targets(target, list(entries))
    target.mkdir(parents=True, exist_ok=True)
    bad: list[str] = []
    errors: list[str] = []
    for rel, dest in targets.items():
        entry = entries[rel]
        try:
            blob = _cached_blob(repo.storage, version, rel, entry, verify)
        except IntegrityError as exc:
            bad.extend(exc.files or [rel])
            errors.append(str(exc))
            continue
        if not into_cache and entry.hex and dest.exists() and hashcache.lookup(dest) == entry.hex:
            continue  # already copied there, untouched since
        _place(blob, dest, link=into_cache)
        if not into_cache and entry.hex:
            hashcache.remember(dest, entry.hex, dest.stat(), written_by_us=True)
    if bad:
        raise IntegrityError(
            f"{version.ref}: {len(bad)} file(s) failed verification: " + " ".join(errors),
            ref=version.ref,
            files=bad,
        )
    hashcache.mark_used([e.hex for e in entries.values() if e.hex])
    return target


def download_file(repo: Repository, version: ArtifactVersion, rel: str) -> Path:
    """One file of the version, in its folder in the cache, checked."""
    dest = _targets(version_dir(repo, version), [rel])[rel]
    entry = version.manifest.files[rel]
    fetched = entry.hex is None or not blob_path(entry.hex).exists()  # a bar only then
    with shown(entry.size if fetched else 0, f"download {version.ref}/{rel}"):
        blob = _cached_blob(repo.storage, version, rel, entry, verify=True, trust_checked=True)
    _place(blob, dest, link=True)
    if entry.hex:
        hashcache.mark_used([entry.hex])
    return dest


def chunks_from_shelf(
    version: ArtifactVersion, rel: str, map_file: MapFile | None = None
) -> list[Buffer] | None:
    """The chunks of one file straight from a local shelf's blobs: a load that needs no copy
    of the whole file in the cache.

    Each chunk is checked: by its stat data when this machine hashed that very blob before
    (as cache blobs are), else by hashing it. On local disk each is memory-mapped, privately
    (a write to a tensor made from it never reaches the blob); on a network or FUSE mount
    (NFS, Colab's Drive) each is read into memory instead, since another machine's gc may
    remove a blob of a deleted version, and a mapped page that is gone kills the process.

    ``map_file(path, size)``: how to map a blob privately without holding a file descriptor
    (PyTorch's maps close theirs); without it, Python's ``mmap`` is used, which keeps a
    descriptor per map, so a file of more chunks than an eighth of the limit on open files is
    read instead.

    None when the file is not stored in chunks, the shelf is not a folder on this machine,
    or the whole file is already in the cache, checked (then that one file is mapped).
    """
    entry = version.manifest.files.get(rel)
    storage = version.shelf.repository.storage
    if entry is None or not entry.chunks or entry.ref is not None:
        return None
    if storage.local_file(blob_key(entry.chunks[0][0].split(":", 1)[1])) is None:
        return None
    if entry.hex and hashcache.trusted_blob(blob_path(entry.hex), entry.hex):
        return None
    with shown(entry.size, f"load {version.ref}/{rel}"):
        mapper: MapFile | None = None
        if storage.maps_safely and map_file is not None:
            mapper = map_file
        elif storage.maps_safely and len(entry.chunks) <= _mappable_chunks():
            mapper = _map_copy
        return [_chunk(storage, version, rel, entry, i, mapper) for i in range(len(entry.chunks))]


#: What a chunk is held in: a private memory map of its blob (``mmap``, or what a
#: ``MapFile`` returns: a writable buffer of the bytes), or its bytes read.
Buffer = Any
#: Maps the first ``size`` bytes of a file privately (copy-on-write).
MapFile = Callable[[Path, int], Any]


def _map_copy(path: Path, size: int) -> mmap.mmap:
    """Python's private map of a file (it keeps a duplicate of the descriptor while it lives)."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)


def _mappable_chunks() -> int:
    """How many chunks of one file may be mapped: each map holds a file descriptor (Python's
    mmap keeps its own) for as long as a tensor uses it, so a file of more chunks than an
    eighth of the process's limit on open files is read instead."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 0
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft // 8


def _chunk(
    storage: Storage,
    version: ArtifactVersion,
    rel: str,
    entry: FileEntry,
    i: int,
    mapper: MapFile | None,
) -> Buffer:
    """Chunk ``i``, mapped by ``mapper`` (else read), checked."""
    check = _ChunkCheck(storage, version, rel, entry, i)
    path = storage.local_file(check.key)
    assert path is not None
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            trusted = st.st_size == check.size and hashcache.trusted_shelf_blob(
                path, check.digest, st
            )
            buf: Buffer
            if mapper is not None and st.st_size == check.size and check.size:
                buf = mapper(path, check.size)  # by name: checked against ``st`` below
                extra = b""
                if hashcache.changed_since(path, st):
                    trusted = False  # replaced meanwhile: what was mapped is hashed
            else:
                buf = bytearray(check.size)
                view, n = memoryview(buf), 0
                while n < check.size and (got := f.readinto(view[n:])):
                    n += got
                view.release()
                if n < check.size:
                    del buf[n:]
                extra = f.read(1)
    except FileNotFoundError:
        raise _missing(storage, version, rel, check.hex) from None
    if trusted and len(buf) == check.size and not extra:
        return buf
    check.add(memoryview(buf))
    check.add(extra)
    check.done()  # raises IntegrityError naming the chunk unless it is right
    hashcache.trust_shelf_blob_if_unchanged(path, check.digest, st)
    return buf


def verify_on_shelf(repo: Repository, version: ArtifactVersion) -> None:
    """Re-read every byte of ``version`` from the shelf (and check every reference)."""
    problems: list[str] = []
    bad: list[str] = []
    for rel, entry in sorted(version.manifest.files.items()):
        try:
            if entry.ref is not None:
                references.check(rel, entry)
                continue
            hexdigest, size = hash_chunks(_source(repo.storage, version, rel, entry))
            if hexdigest != entry.hex or size != entry.size:
                raise IntegrityError(
                    f"{rel!r}: expected {entry.size} bytes with {entry.digest}, found {size} "
                    f"bytes with sha256:{hexdigest}",
                    files=[rel],
                )
        except IntegrityError as exc:
            bad.append(rel)
            problems.append(str(exc))
    if bad:
        raise IntegrityError(
            f"{version.ref} failed verification; bad files: {', '.join(map(repr, bad))}. "
            + " ".join(problems),
            ref=version.ref,
            files=bad,
        )


def cached_blob_from(storage: Storage, hexdigest: str) -> Path:
    """A verified local copy of one blob of ``storage`` (from the cache, or fetched into it)."""
    dest = blob_path(hexdigest)
    if dest.exists() and hashcache.file_digest(dest) == hexdigest:
        return dest

    def check(got: str, _size: int) -> None:
        if got != hexdigest:
            raise IntegrityError(
                f"The blob {storage.describe(blob_key(hexdigest))} is corrupted "
                f"(its bytes hash to {got})."
            )

    if not storage.exists(blob_key(hexdigest)):
        raise IntegrityError(
            f"The blob {storage.describe(blob_key(hexdigest))} is missing: a version that "
            "references it is damaged (gc reports such versions; verify() names them)."
        )
    return _into_cache(storage.iter_chunks(blob_key(hexdigest)), check)
