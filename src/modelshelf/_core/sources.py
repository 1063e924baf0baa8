"""Where the bytes of a file to commit come from: a local file, bytes made on the fly, or
another shelf's blobs. Each knows how to store itself in a repository (again, if gc took it).

A safetensors file is stored in chunks cut on tensor boundaries (``_format.safetensors``):
each chunk is hashed first, and only the chunks the shelf lacks are sent, so a checkpoint
whose frozen layers did not change stores only what did, and a re-log of an unchanged model
writes nothing.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._config import CHUNK_SIZE
from .._errors import ConflictError
from .._format import safetensors
from .._format.layout import blob_key
from .._format.manifest import FileEntry
from .._storage import Storage
from .._storage.base import IN_MEMORY, ChangedWhileReading
from .._storage.hashing import Hasher, nbytes
from . import hashcache

if TYPE_CHECKING:
    from .repository import Repository

#: The bytes of one chunk, as buffers; called once per pass over them.
Piece = Callable[[], Iterable[Any]]
#: Chunks sent at once to an object store, where each request waits on the network.
REMOTE_SENDS = 8


class Source(Protocol):
    """A file of a version being committed."""

    def store(self, repo: Repository, planned: FileEntry | None = None) -> FileEntry:
        """Put the file's bytes on ``repo`` (skipping what is there) and describe them;
        ``planned``: what ``plan`` returned (the bytes are checked against it as they go)."""

    def plan(self, repo: Repository) -> FileEntry | None:
        """The entry ``store`` will return, without storing anything, when telling it costs
        no more than storing does anyway; else None. A commit whose every file can tell it
        writes its lease first (``Repository.commit``)."""


class BlobCheck(Protocol):
    """Whether a blob (by its hex sha256) is on the shelf; ``stored`` notes one just sent.
    ``Repository.blobs_there`` gives one that may answer from what the commit saw before."""

    def __call__(self, hexdigest: str) -> bool: ...

    def stored(self, hexdigest: str) -> None: ...


class AskStorage:
    """A ``BlobCheck`` that asks the storage every time."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def __call__(self, hexdigest: str) -> bool:
        return self.storage.exists(blob_key(hexdigest))

    def stored(self, hexdigest: str) -> None:
        pass


@dataclass(frozen=True)
class LocalFile:
    """A local file waiting to be stored."""

    path: Path

    def store(self, repo: Repository, planned: FileEntry | None = None) -> FileEntry:
        if planned is not None and planned.chunks is None:  # hashed by plan: sent whole
            hexdigest, size = repo.put_file(self.path, planned.hex)
            return FileEntry(size=size, digest=f"sha256:{hexdigest}")
        st = os.stat(self.path)
        known = self._known_chunks(repo, st)
        if known is not None:
            return known
        pieces = file_pieces(self.path, st.st_size)
        if pieces is None:
            hexdigest, size = repo.put_file(self.path)
            return FileEntry(size=size, digest=f"sha256:{hexdigest}")
        changed = ConflictError(
            f"{str(self.path)!r} changed while it was being stored; log it again."
        )
        entry = store_chunked(repo.storage, pieces, changed, repo.blobs_there())
        after = os.stat(self.path)
        same = (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
        if not same or entry.size != st.st_size:
            raise changed
        if entry.hex is not None:
            hashcache.remember(self.path, entry.hex, st)
        return entry

    def plan(self, repo: Repository) -> FileEntry | None:
        """Known for a file stored in chunks before and unchanged since (by its stat data),
        and for a file stored whole where it is hashed before it is sent anyway (an object
        store); not for a new file that would be stored in chunks."""
        st = os.stat(self.path)
        cached = self._cached_chunks(st)
        if cached is not None:
            return cached
        if not repo.storage.hash_before_upload or file_pieces(self.path, st.st_size) is not None:
            return None
        return FileEntry(size=st.st_size, digest=f"sha256:{hashcache.file_digest(self.path)}")

    def _cached_chunks(self, st: os.stat_result) -> FileEntry | None:
        """The entry of the file as stored in chunks before, if it is unchanged since (by its
        stat data): the hash cache knows its digest and its chunks."""
        digest = hashcache.lookup(self.path, st)
        chunks = hashcache.chunks_of(digest) if digest is not None else None
        if not chunks or len(chunks) < 2 or sum(n for _, n in chunks) != st.st_size:
            return None
        return FileEntry(size=st.st_size, digest=f"sha256:{digest}", chunks=tuple(chunks))

    def _known_chunks(self, repo: Repository, st: os.stat_result) -> FileEntry | None:
        """That entry, when all its chunks are on the shelf: a re-log that reads nothing."""
        entry = self._cached_chunks(st)
        if entry is None:
            return None
        there = repo.blobs_there()
        return entry if all(there(h) for h in entry.blob_hexes()) else None


@dataclass(frozen=True)
class StreamedFile:
    """Bytes made on the fly (a safetensors file written from tensors in memory); ``chunks``
    is called once per pass over them."""

    chunks: Callable[[], Iterable[Any]]
    #: The same bytes cut in chunks to store apart, when they can be (a safetensors file).
    #: None, or returning None: store them whole.
    pieces: Callable[[], Sequence[Piece] | None] | None = None

    def store(self, repo: Repository, planned: FileEntry | None = None) -> FileEntry:
        pieces = self.pieces() if self.pieces is not None else None
        if pieces is not None:
            changed = ConflictError(
                "The tensors changed while they were being stored (is the model still training "
                "in another thread?); log it again."
            )
            return store_chunked(repo.storage, pieces, changed, repo.blobs_there())
        hexdigest, size = repo.storage.put_stream(self.chunks, blob_key)
        return FileEntry(size=size, digest=f"sha256:{hexdigest}")

    def plan(self, repo: Repository) -> FileEntry | None:
        return None  # its bytes would be made twice


@dataclass(frozen=True)
class CopiedFile:
    """A file of another shelf's version: only the blobs the target lacks are sent."""

    source: Storage
    entry: FileEntry
    fetch: Callable[[Storage, str], Path]  # a verified local copy of one of ``source``'s blobs

    def store(self, repo: Repository, planned: FileEntry | None = None) -> FileEntry:
        there = repo.blobs_there()
        for hexdigest in sorted(self.entry.blob_hexes()):
            if not there(hexdigest):
                repo.storage.upload(self.fetch(self.source, hexdigest), blob_key, hexdigest)
                there.stored(hexdigest)
        return self.entry

    def plan(self, repo: Repository) -> FileEntry | None:
        return self.entry


@dataclass(frozen=True)
class Referenced:
    """A file that stays where it is (a reference entry): nothing to store."""

    entry: FileEntry

    def store(self, repo: Repository, planned: FileEntry | None = None) -> FileEntry:
        return self.entry

    def plan(self, repo: Repository) -> FileEntry | None:
        return self.entry


def store_chunked(
    storage: Storage,
    pieces: Sequence[Piece],
    changed: Exception,
    there: BlobCheck | None = None,
) -> FileEntry:
    """Store a file as the chunks ``pieces`` yield, in order; one piece makes a plain blob.

    On a local shelf that lacks either of the first two chunks, little will be shared: each
    chunk is written in one pass, hashed as it goes (``_write_first``). Otherwise each chunk is
    hashed first (several at once), and only the chunks the shelf lacks are written. The whole
    file's sha256 then comes from the hash cache when the same chunks made a file before, or
    from a second pass that checks each chunk again and writes the missing ones on the way (to
    an object store they are sent beside it, several at once). ``changed`` is raised when
    bytes differ between the passes: nothing stored ever mismatches its digest. ``there``
    says which chunks the shelf has (default: ask the storage).
    """
    there = there if there is not None else AskStorage(storage)
    remote = storage.hash_before_upload
    probed: list[tuple[str, int]] = []  # the first chunks, hashed to choose the way
    if not remote:
        for piece in pieces[:2]:
            probed.append(_hash_piece(piece))
            if not there(probed[-1][0]):
                # A new header (names, shapes, dtypes), or a first tensor that changed (a
                # training of every layer): little will be shared. One pass writes each chunk
                # while hashing it (a chunk the shelf has is replaced by the same bytes).
                try:
                    return _write_first(storage, pieces)
                except ChangedWhileReading:
                    raise changed from None
    hashers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=hashers, thread_name_prefix="modelshelf-hash") as pool:
        hashed = probed + list(pool.map(_hash_piece, pieces[len(probed) :]))
    chunks = [(f"sha256:{h}", n) for h, n in hashed]
    unique = {d.split(":", 1)[1]: p for p, (d, _) in zip(pieces, chunks, strict=True)}
    with ThreadPoolExecutor(
        max_workers=REMOTE_SENDS if remote else 1, thread_name_prefix="modelshelf-send"
    ) as pool:
        present = pool.map(there, unique)
        missing = {h: p for (h, p), got in zip(unique.items(), present, strict=True) if not got}
        sends: list[Future[tuple[str, int]]] = []
        try:
            if remote:  # each send in a copy of this context: progress listeners live there
                sends = [
                    pool.submit(
                        contextvars.copy_context().run,
                        storage.put_stream, piece, blob_key, expected=h,
                    )
                    for h, piece in missing.items()
                ]  # fmt: skip
                missing = {}
            digest = hashcache.whole_digest(chunks)
            if digest is None:
                digest = _second_pass(storage, pieces, chunks, missing)
                hashcache.remember_whole(chunks, digest)
            for h, piece in missing.items():  # the whole digest was known: no second pass
                storage.put_stream(piece, blob_key, expected=h)
            for future in sends:
                there.stored(future.result()[0])
        except ChangedWhileReading:
            raise changed from None
        except BaseException:
            for future in sends:
                future.cancel()
            raise
    return _entry(digest, chunks)


def _entry(digest: str, chunks: list[tuple[str, int]]) -> FileEntry:
    size = sum(n for _, n in chunks)
    if len(chunks) == 1:
        return FileEntry(size=size, digest=f"sha256:{digest}")
    return FileEntry(size=size, digest=f"sha256:{digest}", chunks=tuple(chunks))


def _write_first(storage: Storage, pieces: Sequence[Piece]) -> FileEntry:
    """Store each piece as a blob in one pass (written while hashed, on a local shelf; an
    existing blob is replaced by the same bytes), the whole file hashed on a second thread."""
    whole = Hasher()
    try:
        stored = storage.put_many([_Once(piece, whole) for piece in pieces], blob_key)
    except BaseException:
        whole.abandon()
        raise
    chunks = [(f"sha256:{hexdigest}", size) for hexdigest, size in stored]
    digest = whole.hexdigest()
    hashcache.remember_whole(chunks, digest)
    return _entry(digest, chunks)


class _Once:
    """A piece's bytes, also fed to ``whole`` as they go by: one pass only (a second would
    feed them twice)."""

    def __init__(self, piece: Piece, whole: Hasher) -> None:
        self.piece, self.whole, self.called = piece, whole, False

    def __call__(self) -> Iterator[Any]:
        if self.called:
            raise RuntimeError("a chunk written in one pass was read twice")
        self.called = True
        for buf in self.piece():
            self.whole.update(buf)
            yield buf


def _hash_piece(piece: Piece) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    for buf in piece():
        h.update(buf)
        n += nbytes(buf)
    return h.hexdigest(), n


def _second_pass(
    storage: Storage,
    pieces: Sequence[Piece],
    chunks: list[tuple[str, int]],
    missing: dict[str, Piece],
) -> str:
    """The sha256 of the concatenated pieces (on a second thread). Each piece is checked
    again against ``chunks``; those in ``missing`` are written on the way (``put_stream``
    checks them), and removed from it."""
    whole = Hasher()

    def tee(piece: Piece) -> Iterator[Any]:
        for buf in piece():
            whole.update(buf)
            yield buf

    try:
        for piece, (digest, size) in zip(pieces, chunks, strict=True):
            hexdigest = digest.split(":", 1)[1]
            if missing.pop(hexdigest, None) is not None:
                storage.put_stream(functools.partial(tee, piece), blob_key, expected=hexdigest)
            elif _hash_piece(functools.partial(tee, piece)) != (hexdigest, size):
                raise ChangedWhileReading(IN_MEMORY)
    except BaseException:
        whole.abandon()
        raise
    return whole.hexdigest()


def file_pieces(path: Path, size: int) -> list[Piece] | None:
    """A local safetensors file cut on tensor boundaries; None for any other file, or one
    too small to cut (it is stored whole)."""
    if size <= safetensors.CHUNK_MIN:
        return None
    with open(path, "rb") as f:
        n = safetensors.header_length(f.read(8), size)
        if n is None:
            return None
        tensors = safetensors.tensor_sizes(f.read(n), size - 8 - n)
    sizes = None if tensors is None else [8 + n, *tensors]
    cut = None if sizes is None else safetensors.cut(sizes)
    if sizes is None or cut is None:
        return None
    pieces: list[Piece] = []
    offset = 0
    for chunk in cut:
        length = sum(sizes[i] for i in chunk)
        pieces.append(functools.partial(_file_range, path, offset, length))
        offset += length
    return pieces


def _file_range(path: Path, offset: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of a local file from ``offset``, CHUNK_SIZE at a time (fewer if the
    file shrank: the sizes then differ, and the store is refused)."""
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while length > 0 and (buf := f.read(min(CHUNK_SIZE, length))):
            length -= len(buf)
            yield buf
