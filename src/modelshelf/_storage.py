"""Key/value access to a shelf root on any fsspec filesystem.

Everything above this module speaks in *keys* (``"artifacts/_/m/versions/000000000003.json"``),
relative to the shelf root. This module gives them the few primitives the shelf format is built
on (see docs/format.md): read, atomic create-if-absent, atomic overwrite, list, delete, and the
streaming upload of a file whose bytes are hashed on the way.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import fsspec

from ._config import CHUNK_SIZE
from ._progress import report

# Filesystems whose object writes become visible whole, or not at all, when the upload completes.
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
# MemoryFileSystem checks-then-creates; this lock makes "xb" atomic among threads of a process.
_MEMORY_LOCK = threading.Lock()


class Hasher:
    """Feeds chunks to sha256 on a second thread, so hashing overlaps reading and writing."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self._queue.put(None)
        self._thread.join()
        return self._hash.hexdigest()

    def abandon(self) -> None:
        """Stop the hashing thread without waiting for the chunks still queued."""
        while True:
            try:
                self._queue.put_nowait(None)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a local file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK_SIZE):
            h.update(chunk)
    return h.hexdigest()


class Storage:
    """A shelf root on an fsspec filesystem, addressed by relative keys."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        self.protocols = tuple(protocols)
        self.object_store = any(p in _OBJECT_STORES for p in self.protocols)
        self.is_memory = "memory" in self.protocols

    @staticmethod
    def open_url(url: str, storage_options: dict[str, Any] | None = None) -> Storage:
        """Return the Storage for a root URL or local path."""
        if "://" not in url or url.startswith("file://"):
            path = url[len("file://") :] if url.startswith("file://") else url
            return LocalStorage(str(Path(path).expanduser().absolute()))
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
        return Storage(fs, path, url.rstrip("/"))

    # -- paths ---------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def describe(self, key: str) -> str:
        """A user-facing location for ``key`` (for error messages)."""
        return f"{self.url}/{key}"

    def local_path(self, key: str) -> Path | None:
        """The OS path of ``key`` when the shelf is on local disk, else None."""
        return None

    # -- reads ---------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        """Return the bytes at ``key``; raise FileNotFoundError when absent."""
        data = self.fs.cat_file(self.path(key))
        return bytes(data)

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
            value = got.get(p, got.get(self.fs._strip_protocol(p)))
            if isinstance(value, (bytes, bytearray)):
                out[key] = bytes(value)
            elif isinstance(value, Exception) and not isinstance(value, FileNotFoundError):
                raise value
        return out

    def open_read(self, key: str) -> IO[bytes]:
        return self.fs.open(self.path(key), "rb")  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        path = self.path(key)
        self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def modified(self, key: str) -> float | None:
        """Last-modified time as a POSIX timestamp, when the filesystem knows it."""
        try:
            return float(self.fs.modified(self.path(key)).timestamp())
        except (NotImplementedError, AttributeError, KeyError):
            return None

    def find(self, prefix: str) -> list[str]:
        """Return every key under ``prefix`` (recursively), sorted."""
        base = self.path(prefix)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        stripped_root = self.fs._strip_protocol(self.root).rstrip("/")
        out = []
        for p in found:
            p = self.fs._strip_protocol(p)
            if p.startswith(stripped_root + "/"):
                out.append(p[len(stripped_root) + 1 :])
        return sorted(out)

    def find_detailed(self, prefix: str) -> dict[str, tuple[int, _dt.datetime | None]]:
        """Every key under ``prefix`` with its size and last-modified time (when known)."""
        base = self.path(prefix)
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        stripped_root = self.fs._strip_protocol(self.root).rstrip("/")
        out = {}
        for p, info in found.items():
            p = self.fs._strip_protocol(p)
            if p.startswith(stripped_root + "/"):
                out[p[len(stripped_root) + 1 :]] = (int(info.get("size") or 0), _mtime(info))
        return out

    def listdir(self, prefix: str) -> list[str]:
        """Return the names directly under ``prefix`` (files and folders), sorted."""
        base = self.path(prefix)
        self.fs.invalidate_cache(base)
        try:
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        names = {self.fs._strip_protocol(e).rstrip("/").rsplit("/", 1)[-1] for e in entries}
        return sorted(n for n in names if n)

    # -- writes --------------------------------------------------------------------------
    def create(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` only if nothing is there; return False if it existed.

        The one atomic primitive the format needs: ``O_EXCL``/link on local disk,
        ``If-None-Match: *`` on S3, a locked check-and-create on ``memory://``.
        """
        path = self.path(key)
        try:
            if self.is_memory:
                with _MEMORY_LOCK:
                    if self.fs.exists(path):
                        return False
                    self.fs.pipe_file(path, data)
            elif self.object_store:
                self.fs.pipe_file(path, data, mode="create")
            else:
                with self.fs.open(path, "xb") as f:
                    f.write(data)
        except FileExistsError:
            return False
        return True

    def replace(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Overwrite ``key`` with ``data``; readers see the old or the new bytes, whole.

        ``durable=False`` skips the fsync on local disk, for hints that can be rebuilt.
        """
        path = self.path(key)
        if self.object_store or self.is_memory:
            self.fs.pipe_file(path, data)
            return
        tmp = self.path(f"tmp/{uuid.uuid4().hex}")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path(key))

    def delete_many(self, keys: Iterable[str]) -> None:
        paths = [self.path(k) for k in keys]
        if paths:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(paths)

    def upload(
        self, source: str | os.PathLike[str], key_for: Callable[[str], str], expected: str | None
    ) -> str:
        """Stream a local file to ``key_for(its sha256)``, hashing it on the way; return the hash.

        The bytes become visible only once complete and, when ``expected`` (the hash already
        known) is given, only if they hash to it; otherwise nothing is written and an OSError
        says the file changed while it was read. Object stores get the bytes at their final key
        (an upload is visible whole or not at all, so ``expected`` is required there); other
        filesystems get a temporary name, moved into place.
        """
        if self.object_store and expected is not None:
            changed = ChangedWhileReading(source)
            return self._write_final(key_for(expected), _file_chunks(source), expected, changed)[0]
        tmp = f"tmp/{uuid.uuid4().hex}"
        try:
            with self.fs.open(self.path(tmp), "wb") as f:
                digest, _ = _write_hashed(_file_chunks(source), f)
            if expected is not None and digest != expected:
                raise ChangedWhileReading(source)
            self.fs.mv(self.path(tmp), self.path(key_for(digest)))
        except BaseException:
            self.delete(tmp)
            raise
        return digest

    def _write_final(
        self, key: str, chunks: Iterable[Any], expected: str, changed: Exception
    ) -> tuple[str, int]:
        """Upload to an object store's final key; complete it only if the bytes hash to
        ``expected`` (else abort, so nothing becomes visible, and raise ``changed``)."""
        f = self.fs.open(self.path(key), "wb")
        try:
            digest, size = _write_hashed(chunks, f)
            if digest != expected:
                raise changed
        except BaseException:
            _discard(f)
            raise
        f.close()
        return digest, size

    def put_stream(
        self, chunks: Callable[[], Iterable[Any]], key_for: Callable[[str], str]
    ) -> tuple[str, int]:
        """Store the bytes ``chunks()`` yields (buffers) under ``key_for(sha256)``.

        Used for bytes made on the fly (a safetensors file written from tensors in memory):
        they are never gathered in one piece. Object stores get two passes, hashing first, so
        that the upload goes straight to its final key (and is skipped when already stored).
        """
        if self.object_store:
            h, size = hashlib.sha256(), 0
            for chunk in chunks():
                h.update(chunk)
                size += len(memoryview(chunk).cast("B"))
            digest = h.hexdigest()
            if self.exists(key_for(digest)):
                return digest, size
            changed = OSError("the bytes changed between the two passes over them")
            return self._write_final(key_for(digest), chunks(), digest, changed)
        tmp = f"tmp/{uuid.uuid4().hex}"
        try:
            with self.fs.open(self.path(tmp), "wb") as f:
                digest, size = _write_hashed(chunks(), f)
            self.fs.mv(self.path(tmp), self.path(key_for(digest)))
        except BaseException:
            self.delete(tmp)
            raise
        return digest, size

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        with self.open_read(key) as f:
            while chunk := f.read(CHUNK_SIZE):
                yield chunk


def _file_chunks(source: str | os.PathLike[str]) -> Iterator[bytes]:
    with open(source, "rb", buffering=0) as src:
        while chunk := src.read(CHUNK_SIZE):
            yield chunk


def _write_hashed(chunks: Iterable[Any], f: IO[bytes]) -> tuple[str, int]:
    """Write buffers to ``f`` while a second thread hashes them; return (sha256, size)."""
    hasher, size = Hasher(), 0
    try:
        for chunk in chunks:
            hasher.update(chunk)
            f.write(chunk)
            n = len(memoryview(chunk).cast("B"))
            size += n
            report(n)
    except BaseException:
        hasher.abandon()
        raise
    return hasher.hexdigest(), size


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


class ChangedWhileReading(OSError):
    def __init__(self, source: str | os.PathLike[str]) -> None:
        super().__init__(f"{os.fspath(source)!r} changed while it was being stored; log it again")


def _discard(f: Any) -> None:
    """Abandon a half-written remote file so that nothing becomes visible."""
    discard = getattr(f, "discard", None)
    if discard is not None:
        with contextlib.suppress(Exception):
            discard()
    with contextlib.suppress(Exception):
        f.closed = True


class LocalStorage(Storage):
    """A shelf on local disk, driven with os calls: link for create, os.replace for moves."""

    def __init__(self, root: str) -> None:
        super().__init__(fsspec.filesystem("file"), root, root)
        self.base = Path(root)
        self._made: set[Path] = set()

    def describe(self, key: str) -> str:
        return str(self.base / key)

    def local_path(self, key: str) -> Path:
        return self.base / key

    def _tmp(self) -> Path:
        tmp = self.base / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{uuid.uuid4().hex}.tmp"

    def read(self, key: str) -> bytes:
        try:
            with open(self.base / key, "rb") as f:
                return f.read()
        except (NotADirectoryError, IsADirectoryError):
            raise FileNotFoundError(str(self.base / key)) from None

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        out = {}
        for key in keys:
            data = self.try_read(key)
            if data is not None:
                out[key] = data
        return out

    def open_read(self, key: str) -> IO[bytes]:
        return open(self.base / key, "rb")

    def exists(self, key: str) -> bool:
        return (self.base / key).exists()

    def size(self, key: str) -> int:
        return (self.base / key).stat().st_size

    def modified(self, key: str) -> float | None:
        return (self.base / key).stat().st_mtime

    def find(self, prefix: str) -> list[str]:
        base = self.base / prefix if prefix else self.base
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.base).as_posix()
            out.extend(f"{rel}/{name}" if rel != "." else name for name in files)
        return sorted(out)

    def find_detailed(self, prefix: str) -> dict[str, tuple[int, _dt.datetime | None]]:
        out: dict[str, tuple[int, _dt.datetime | None]] = {}
        for key in self.find(prefix):
            with contextlib.suppress(FileNotFoundError):
                st = (self.base / key).stat()
                out[key] = (st.st_size, _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc))
        return out

    def listdir(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self.base / prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def _write_tmp(self, data: bytes, *, durable: bool = True) -> Path:
        tmp = self._tmp()
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def create(self, key: str, data: bytes) -> bool:
        # Write the whole record under a private name, then link it into place: link fails
        # if the name exists (like O_EXCL) and readers never see a half-written record.
        final = self.base / key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_tmp(data)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def replace(self, key: str, data: bytes, *, durable: bool = True) -> None:
        final = self.base / key
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_tmp(data, durable=durable)
        try:
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        (self.base / key).unlink(missing_ok=True)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def _mkdir(self, folder: Path) -> None:
        if folder not in self._made:
            folder.mkdir(parents=True, exist_ok=True)
            self._made.add(folder)

    def upload(
        self, source: str | os.PathLike[str], key_for: Callable[[str], str], expected: str | None
    ) -> str:
        # Small files: one read, hashed and written from memory. Large files: the kernel
        # copies (copy_file_range/sendfile, no bytes through Python) while a second thread
        # hashes the source; the caller compares the source's stat data before and after,
        # so a file changed meanwhile is refused rather than stored under a wrong digest.
        tmp = self._tmp()
        try:
            with open(source, "rb", buffering=0) as src:
                head = src.read(CHUNK_SIZE + 1)
                if len(head) <= CHUNK_SIZE:
                    digest = hashlib.sha256(head).hexdigest()
                    with open(tmp, "wb") as f:
                        f.write(head)
                    report(len(head))
                else:
                    digest = self._copy_and_hash(source, tmp)
                    report(os.path.getsize(tmp))
            if expected is not None and digest != expected:
                raise ChangedWhileReading(source)
            final = self.base / key_for(digest)
            self._mkdir(final.parent)
            try:
                os.replace(tmp, final)
            except FileNotFoundError:  # the folder was removed since we made it
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def put_stream(
        self, chunks: Callable[[], Iterable[Any]], key_for: Callable[[str], str]
    ) -> tuple[str, int]:
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as f:
                digest, size = _write_hashed(chunks(), f)
            final = self.base / key_for(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size

    @staticmethod
    def _copy_and_hash(source: str | os.PathLike[str], tmp: Path) -> str:
        result: list[str] = []
        errors: list[BaseException] = []

        def hash_it() -> None:
            try:
                result.append(sha256_file(source))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=hash_it, daemon=True)
        thread.start()
        try:
            shutil.copyfile(source, tmp)
        finally:
            thread.join()
        if errors:
            raise errors[0]
        return result[0]
