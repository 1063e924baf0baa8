"""The storage contract: key/value access to a shelf root, and its generic fsspec form.

Everything above this package speaks in *keys* (``"artifacts/_/m/versions/000000000003.json"``),
relative to the shelf root. A backend gives them the few primitives the shelf format is built
on (docs/format.md):

- ``read`` / ``try_read`` / ``read_many`` / ``open_read`` / ``iter_chunks``: bytes at a key;
- ``create``: atomic create-if-absent, **the** primitive every log of records relies on;
- ``replace``: atomic overwrite (readers see the old bytes or the new, whole);
- ``find`` / ``find_detailed`` / ``find_fingerprints`` (with each key's MD5, where the
  listing reports it) / ``listdir`` / ``exists`` / ``size``;
- ``delete`` / ``delete_many``;
- ``upload`` (a local file) and ``put_stream`` (bytes made on the fly): stored under the
  key of their sha256, hashed on the way.

``Storage`` implements them for any fsspec filesystem with write-then-move; the subclasses in
``local``, ``objectstore`` and ``memory`` replace the ones their backend does better or
needs done differently (each backend's create-if-absent lives in its own class).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import fsspec

from .._errors import IntegrityError
from .hashing import file_chunks, reader_chunks, write_hashed

KeyFor = Callable[[str], str]

#: The most bytes ``read`` returns: records and manifests are small, and a shelf someone else
#: wrote could hold a record of any size (a 200 MB one would cost a reader gigabytes).
MAX_READ_BYTES = 64 * 1024 * 1024


def too_large(where: str) -> IntegrityError:
    return IntegrityError(
        f"The shelf record {where} is larger than {MAX_READ_BYTES // (1024 * 1024)} MiB, more "
        "than any record modelshelf writes: it is refused unread."
    )


def check_key(key: str) -> str:
    """Return ``key`` if it names something inside the shelf root, else raise IntegrityError.

    Keys are built from names, ids and digests that may come from a shelf someone else wrote
    (or from listing it): every backend checks each key before use, so that nothing read from
    a shelf can make a read or a write leave its root.
    """
    if key == "":
        return key  # the root itself (listing everything)
    if (
        not isinstance(key, str)
        or key.startswith("/")
        or "\\" in key
        or "\x00" in key
        or any(part in ("", ".", "..") for part in key.split("/"))
    ):
        raise IntegrityError(
            f"Refusing the shelf key {key!r}: it would leave the shelf's folder. The shelf "
            "(or a record on it) may have been tampered with."
        )
    return key


Chunks = Callable[[], Iterable[Any]]


#: What ChangedWhileReading names for bytes made on the fly.
IN_MEMORY = "<bytes made in memory>"


class ChangedWhileReading(OSError):
    """A local file's bytes changed while it was being stored."""

    def __init__(self, source: str | os.PathLike[str]) -> None:
        super().__init__(f"{os.fspath(source)!r} changed while it was being stored; log it again")


class Storage:
    """A shelf root on an fsspec filesystem, addressed by relative keys.

    This generic form serves filesystems that are neither local disk, an object store nor
    memory: create-if-absent opens the key with ``"xb"``; other writes go to a temporary key
    that is moved into place.
    """

    #: Whether hashing a local file before storing it beats sending its bytes again (a remote
    #: store: known bytes are then not uploaded at all).
    hash_before_upload: ClassVar[bool] = False

    #: Files up to this size are stored without first asking whether their bytes are there:
    #: on a remote store, asking costs a request and a round trip, as sending them does.
    upload_unasked_bytes: ClassVar[int] = 0

    #: Whether one listing of a prefix is as cheap as one read (an object store: one request
    #: per thousand keys). Logs of records then find their head by listing, not by probing.
    lists_heads: ClassVar[bool] = False

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    @property
    def creates_can_tear(self) -> bool:
        """Whether ``create`` writes the final key in place, so that a crash can leave a torn
        record there (a reader then finds one that does not decode)."""
        return True

    # -- paths ---------------------------------------------------------------------------
    def path(self, key: str) -> str:
        check_key(key)
        return f"{self.root}/{key}" if key else self.root

    def describe(self, key: str) -> str:
        """A user-facing location for ``key`` (for error messages)."""
        return f"{self.url}/{key}"

    def _strip(self, path: str) -> str:
        return str(self.fs._strip_protocol(path))  # noqa: SLF001 - fsspec's own path normaliser

    def _relative(self, path: str) -> str | None:
        root = self._strip(self.root).rstrip("/")
        p = self._strip(path)
        return p[len(root) + 1 :] if p.startswith(root + "/") else None

    # -- reads ---------------------------------------------------------------------------
    def local_file(self, key: str) -> Path | None:
        """A path on this machine that holds ``key``'s bytes, for a backend that has one (a
        local or mounted folder); None elsewhere. Only for reading."""
        return None

    @property
    def maps_safely(self) -> bool:
        """Whether the files ``local_file`` gives may be memory-mapped (see LocalStorage)."""
        return False

    def read(self, key: str) -> bytes:
        """Return the bytes at ``key`` (a record or manifest, at most MAX_READ_BYTES); raise
        FileNotFoundError when absent."""
        data = bytes(self.fs.cat_file(self.path(key), start=0, end=MAX_READ_BYTES + 1))
        if len(data) > MAX_READ_BYTES:
            raise too_large(self.describe(key))
        return data

    def try_read(self, key: str) -> bytes | None:
        try:
            return self.read(key)
        except FileNotFoundError:
            return None

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """Return the bytes of each key that exists (fetched concurrently where supported)."""
        if not keys:
            return {}
        paths = [self.path(k) for k in keys]
        got = self.fs.cat(paths, on_error="return")
        out: dict[str, bytes] = {}
        for key, p in zip(keys, paths, strict=True):
            value = got.get(p, got.get(self._strip(p)))
            if isinstance(value, (bytes, bytearray)):
                if len(value) > MAX_READ_BYTES:
                    raise too_large(self.describe(key))
                out[key] = bytes(value)
            elif isinstance(value, Exception) and not isinstance(value, FileNotFoundError):
                raise value
        return out

    def open_read(self, key: str) -> IO[bytes]:
        return self.fs.open(self.path(key), "rb")  # type: ignore[no-any-return]

    def iter_chunks(self, key: str, size: int | None = None) -> Iterator[bytes]:
        """The bytes at ``key``, in order, a buffer at a time. ``size``: what the caller
        expects there (a store may then fetch parts side by side); the bytes are whatever is
        there, which the caller checks."""
        with self.open_read(key) as f:
            yield from reader_chunks(f)

    def exists(self, key: str) -> bool:
        path = self.path(key)
        self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def modified(self, key: str) -> _dt.datetime | None:
        """When ``key`` was last written, if the filesystem says; FileNotFoundError if absent."""
        path = self.path(key)
        self.fs.invalidate_cache(path)
        return _mtime(self.fs.info(path))

    def find(self, prefix: str) -> list[str]:
        """Return every key under ``prefix`` (recursively), sorted."""
        return sorted(self.find_detailed(prefix))

    def find_detailed(self, prefix: str) -> dict[str, tuple[int, _dt.datetime | None]]:
        """Every key under ``prefix`` with its size and last-modified time (when known)."""
        out = {}
        for p, info in self._found(prefix).items():
            key = self._relative(p)
            if key is not None:
                out[key] = (int(info.get("size") or 0), _mtime(info))
        return out

    def find_fingerprints(self, prefix: str) -> dict[str, str | None]:
        """Every key under ``prefix`` with the MD5 (hex) of its bytes as the listing reports
        it, or None where it reports none (local disk; a multipart or encrypted object)."""
        out = {}
        for p, info in self._found(prefix).items():
            key = self._relative(p)
            if key is not None:
                out[key] = self.listed_md5(info)
        return out

    def listed_md5(self, info: dict[str, Any]) -> str | None:
        """The MD5 of an object's bytes as its listing entry ``info`` states it, if it does."""
        return None

    def _found(self, prefix: str) -> dict[str, dict[str, Any]]:
        """fsspec's ``find(..., detail=True)`` of everything under ``prefix`` ({} if none)."""
        base = self.path(prefix)
        self.fs.invalidate_cache(base)
        try:
            return dict(self.fs.find(base, detail=True))
        except FileNotFoundError:
            return {}

    def listdir(self, prefix: str) -> list[str]:
        """Return the names directly under ``prefix`` (files and folders), sorted."""
        base = self.path(prefix)
        self.fs.invalidate_cache(base)
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        names = {self._strip(e).rstrip("/").rsplit("/", 1)[-1] for e in entries}
        return sorted(n for n in names if n)

    # -- writes --------------------------------------------------------------------------
    def _parent(self, key: str) -> None:
        """Make the folder ``key`` goes in (a no-op on filesystems without folders)."""
        parent = self.path(key).rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)

    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` only if nothing is there; return False if it existed.

        This generic form opens the key with ``"xb"``: readers may see the record while it is
        written, and a write that fails removes what it had created. Records are sealed by
        their checksum, so neither passes for a real one (see ``_format/records``).
        """
        self._parent(key)
        path = self.path(key)
        try:
            f = self.fs.open(path, "xb")
        except FileExistsError:
            return False
        try:
            with f:
                f.write(data)
        except BaseException:
            with contextlib.suppress(Exception):
                self.fs.rm_file(path)
            raise
        return True

    def replace(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Overwrite ``key`` with ``data``; readers see the old or the new bytes, whole.

        ``durable=False`` allows skipping the fsync, for hints that can be rebuilt.
        """
        tmp = self._tmp_key()
        self._parent(tmp)
        try:
            self.fs.pipe_file(self.path(tmp), data)
            self._parent(key)
            self.fs.mv(self.path(tmp), self.path(key))
        finally:
            self.delete(tmp)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def move(self, key: str, new_key: str) -> None:
        """Move the bytes at ``key`` to ``new_key`` (fsck's quarantine; never a record's key)."""
        self._parent(new_key)
        self.fs.mv(self.path(key), self.path(new_key))

    def delete_many(self, keys: Iterable[str]) -> None:
        paths = [self.path(k) for k in keys]
        if paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(paths)

    def upload(self, source: str | os.PathLike[str], key_for: KeyFor, expected: str | None) -> str:
        """Stream a local file to ``key_for(its sha256)``, hashing it on the way; return the hash.

        The bytes become visible only once complete and, when ``expected`` (the hash already
        known) is given, only if they hash to it; otherwise nothing is written and
        ChangedWhileReading says the file changed while it was read.
        """
        digest = self._put_via_tmp(lambda: file_chunks(source), key_for, expected)[0]
        if expected is not None and digest != expected:
            raise ChangedWhileReading(source)
        return digest

    def put_stream(
        self, chunks: Chunks, key_for: KeyFor, expected: str | None = None
    ) -> tuple[str, int]:
        """Store the bytes ``chunks()`` yields (buffers) under ``key_for(sha256)``.

        Used for bytes made on the fly (a safetensors file written from tensors in memory):
        they are never gathered in one piece. With ``expected`` (their hash, known already),
        they are stored only if they hash to it; otherwise ChangedWhileReading.
        """
        digest, size = self._put_via_tmp(chunks, key_for, expected)
        if expected is not None and digest != expected:
            raise ChangedWhileReading(IN_MEMORY)
        return digest, size

    def put_many(self, streams: Sequence[Chunks], key_for: KeyFor) -> list[tuple[str, int]]:
        """``put_stream`` of each of ``streams``, in order (each is read once): (sha256, size)
        of each. Backends that can batch the work (local disk: one round of fsyncs) do."""
        return [self.put_stream(chunks, key_for) for chunks in streams]

    def _tmp_key(self) -> str:
        return f"tmp/{uuid.uuid4().hex}"

    def _put_via_tmp(
        self, chunks: Chunks, key_for: KeyFor, expected: str | None
    ) -> tuple[str, int]:
        tmp = self._tmp_key()
        self._parent(tmp)
        try:
            with self.fs.open(self.path(tmp), "wb") as f:
                digest, size = write_hashed(chunks(), f)
            if expected is None or digest == expected:
                self._parent(key_for(digest))
                self.fs.mv(self.path(tmp), self.path(key_for(digest)))
        finally:
            self.delete(tmp)
        return digest, size


def _mtime(info: dict[str, Any]) -> _dt.datetime | None:
    for key in ("LastModified", "mtime", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, _dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
        if isinstance(value, (int, float)):
            return _dt.datetime.fromtimestamp(value, _dt.timezone.utc)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=_dt.timezone.utc)
    return None
