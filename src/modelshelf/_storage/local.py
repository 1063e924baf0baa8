"""Shelves on local disk, driven with os calls: link() for create, os.replace for moves."""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import functools
import hashlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import fsspec

from .._config import CHUNK_SIZE
from .._progress import report
from . import base
from .base import IN_MEMORY, ChangedWhileReading, Chunks, KeyFor, Storage, check_key
from .hashing import sha256_file, write_hashed

logger = logging.getLogger("modelshelf")


#: What link() fails with where a filesystem has no hard links: FUSE mounts such as Colab's
#: Google Drive (ENOSYS), SMB/vfat (EPERM, ENOTSUP), links across devices or over a limit.
_NO_LINKS = {errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV, errno.EMLINK}


def _fsync(fd: int) -> None:
    """fsync, where the filesystem offers it (some FUSE mounts refuse it outright)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


#: Filesystem types (of /proc/mounts) whose files may go away under a mapping.
_NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs",
               "lustre", "fuse", "fuseblk", "sshfs", "gcsfuse", "davfs")  # fmt: skip


def networked(path: Path, mounts: str | None = None) -> bool:
    """Whether ``path`` lies on a network or FUSE filesystem: the type of the longest mount
    point above it in ``mounts`` (default: /proc/mounts; False where there is none)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return False
    real = os.path.realpath(path)
    best, kind = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind.split(".")[0] in _NETWORK_FS


class LocalStorage(Storage):
    """A shelf in a local folder (or a mounted one: NFS, SMB, Google Drive in Colab)."""

    def __init__(self, root: str) -> None:
        super().__init__(fsspec.filesystem("file"), root, root)
        self.base = Path(root)
        self._base_text = str(self.base)
        self._made: set[Path] = set()
        self._links = True  # until link() says this filesystem has none

    @property
    def creates_can_tear(self) -> bool:
        return not self._links

    def _local(self, key: str) -> Path:
        return self.base / check_key(key) if key else self.base

    def describe(self, key: str) -> str:
        # A string, not a Path: every record read names its key (for messages), thousands a
        # page in the web UI.
        return f"{self._base_text}/{key}"

    def _tmp(self) -> Path:
        tmp = self.base / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp / f"{uuid.uuid4().hex}.tmp"

    # -- reads ---------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        try:
            with open(self._local(key), "rb") as f:
                data = f.read(base.MAX_READ_BYTES + 1)
            if len(data) > base.MAX_READ_BYTES:
                raise base.too_large(self.describe(key))
            return data
        except (NotADirectoryError, IsADirectoryError):
            raise FileNotFoundError(str(self._local(key))) from None

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        out = {}
        for key in keys:
            data = self.try_read(key)
            if data is not None:
                out[key] = data
        return out

    def open_read(self, key: str) -> IO[bytes]:
        return open(self._local(key), "rb")

    def local_file(self, key: str) -> Path | None:
        return self._local(key)

    @functools.cached_property
    def maps_safely(self) -> bool:
        """Whether files of this shelf can be memory-mapped without risk: not on a network or
        FUSE filesystem, where a file another machine removes makes a mapped page fault
        (SIGBUS). On local disk a removed file stays whole for whoever has it mapped."""
        return not networked(self.base)

    def exists(self, key: str) -> bool:
        return (self._local(key)).exists()

    def size(self, key: str) -> int:
        return (self._local(key)).stat().st_size

    def modified(self, key: str) -> _dt.datetime:
        mtime = self._local(key).stat().st_mtime
        return _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc)

    def find(self, prefix: str) -> list[str]:
        base = self._local(prefix)
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.base).as_posix()
            out.extend(f"{rel}/{name}" if rel != "." else name for name in files)
        return sorted(out)

    def find_detailed(self, prefix: str) -> dict[str, tuple[int, _dt.datetime | None]]:
        out: dict[str, tuple[int, _dt.datetime | None]] = {}
        for key in self.find(prefix):
            with contextlib.suppress(FileNotFoundError):
                st = (self._local(key)).stat()
                out[key] = (st.st_size, _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc))
        return out

    def listdir(self, prefix: str) -> list[str]:
        try:
            return sorted(os.listdir(self._local(prefix)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    # -- writes --------------------------------------------------------------------------
    def _write_tmp(self, data: bytes, *, durable: bool = True) -> Path:
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    _fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves no empty file behind
            raise
        return tmp

    def create(self, key: str, data: bytes) -> bool:
        # Write the whole record under a private name, then link it into place: link fails
        # if the name exists (like O_EXCL) and readers never see a half-written record.
        final = self._local(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if self._links:
            tmp = self._write_tmp(data)
            try:
                os.link(tmp, final)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                self._links = False
                logger.info(
                    "%s has no hard links (%s); records are created with O_EXCL instead",
                    self.base,
                    os.strerror(exc.errno or 0),
                )
            finally:
                tmp.unlink(missing_ok=True)
        return _create_exclusive(final, data)

    def replace(self, key: str, data: bytes, *, durable: bool = True) -> None:
        final = self._local(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._write_tmp(data, durable=durable)
        try:
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, key: str) -> None:
        (self._local(key)).unlink(missing_ok=True)

    def move(self, key: str, new_key: str) -> None:
        final = self._local(new_key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._local(key), final)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def _move_into_place(self, tmp: Path, key: str, *, synced: bool = False) -> None:
        """fsync a finished blob (unless ``synced`` already), then move it to ``key``: a
        version is committed only after its blobs are, so a power loss cannot leave it pointing
        at truncated bytes."""
        if not synced:
            _fsync_path(tmp)
        final = self._local(key)
        if final.parent not in self._made:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(final.parent)
        try:
            os.replace(tmp, final)
        except FileNotFoundError:  # the folder was removed since we made it
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)

    def upload(self, source: str | os.PathLike[str], key_for: KeyFor, expected: str | None) -> str:
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
                    digest = _copy_and_hash(source, tmp)
                    report(os.path.getsize(tmp))
            if expected is not None and digest != expected:
                raise ChangedWhileReading(source)
            self._move_into_place(tmp, key_for(digest))
        finally:
            tmp.unlink(missing_ok=True)
        return digest

    def put_many(self, streams: Sequence[Chunks], key_for: KeyFor) -> list[tuple[str, int]]:
        # Each stream is written to its temporary file while hashed; then all are fsynced side
        # by side (the filesystem commits them together), and moved into place.
        tmps: list[Path] = []
        done: list[tuple[str, int]] = []
        try:
            for chunks in streams:
                tmps.append(self._tmp())
                with open(tmps[-1], "wb") as f:
                    done.append(write_hashed(chunks(), f))
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="modelshelf-fsync") as pool:
                list(pool.map(_fsync_path, tmps))
            for tmp, (digest, _size) in zip(tmps, done, strict=True):
                self._move_into_place(tmp, key_for(digest), synced=True)
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
        return done

    def put_stream(
        self, chunks: Chunks, key_for: KeyFor, expected: str | None = None
    ) -> tuple[str, int]:
        tmp = self._tmp()
        try:
            with open(tmp, "wb") as f:
                digest, size = write_hashed(chunks(), f)
            if expected is not None and digest != expected:
                raise ChangedWhileReading(IN_MEMORY)
            self._move_into_place(tmp, key_for(digest))
        finally:
            tmp.unlink(missing_ok=True)
        return digest, size


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


def _create_exclusive(final: Path, data: bytes) -> bool:
    """Create ``final`` holding ``data`` unless it exists (O_CREAT|O_EXCL), then fsync.

    Until the bytes are all written a reader sees a record that does not decode (records are
    sealed by their checksum); a failed write removes what it created, and a crash may leave a
    torn record that readers skip (see ``_format/seqlog``).
    """
    try:
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return False
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        _fsync(fd)
    except BaseException:
        os.close(fd)
        final.unlink(missing_ok=True)  # ours: nobody else takes an undecodable record
        raise
    os.close(fd)
    return True


def _copy_and_hash(source: str | os.PathLike[str], tmp: Path) -> str:
    """Copy ``source`` to ``tmp`` in the kernel while a second thread hashes it."""
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
