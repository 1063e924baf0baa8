"""Object stores (S3, GCS, Azure): writes become visible whole, or not at all, on completion."""

from __future__ import annotations

import base64
import binascii
import collections
import concurrent.futures
import contextlib
import contextvars
import hashlib
import itertools
import os
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from .._progress import report
from . import base
from .base import (
    IN_MEMORY,
    ChangedWhileReading,
    Chunks,
    KeyFor,
    Storage,
    too_large,
)
from .hashing import file_chunks, hash_chunks, write_hashed

PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}
_MD5_HEX = re.compile(r"[0-9a-fA-F]{32}")


class ObjectStoreStorage(Storage):
    """A shelf in a bucket: create-if-absent is a conditional put (``If-None-Match: *``).

    Uploads go straight to their final key (a partial upload is never visible), and are
    aborted when the bytes do not hash to what was expected.
    """

    hash_before_upload = True
    upload_unasked_bytes = 1 << 20  # about the bytes a request's round trip could carry
    creates_can_tear = False
    lists_heads = True

    def _parent(self, key: str) -> None:
        pass  # keys need no folders

    # Reads are one request each: fsspec's generic ``exists``, ``info`` and ``cat`` ask again
    # with a listing when a key is missing (it could be a "folder"); a shelf's keys never are.
    def read(self, key: str) -> bytes:
        try:
            return super().read(key)
        except FileNotFoundError:
            raise
        except OSError:
            if self.size(key) == 0:  # an empty object refuses any range
                return b""
            raise

    def exists(self, key: str) -> bool:
        try:
            self.fs.cat_file(self.path(key), start=0, end=1)
        except FileNotFoundError:
            return False
        except OSError:  # an empty object refuses a range: ask the long way
            return super().exists(key)
        return True

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        paths = [self.path(k) for k in keys]
        limit = base.MAX_READ_BYTES
        got = self.fs.cat_ranges(
            paths, [0] * len(paths), [limit + 1] * len(paths), on_error="return"
        )
        out: dict[str, bytes] = {}
        for key, value in zip(keys, got, strict=True):
            if isinstance(value, (bytes, bytearray)):
                if len(value) > limit:
                    raise too_large(self.describe(key))
                out[key] = bytes(value)
            elif not isinstance(value, FileNotFoundError):
                data = self.try_read(key)  # an empty object, or the error again, raised
                if data is not None:
                    out[key] = data
        return out

    def iter_chunks(self, key: str, size: int | None = None) -> Iterator[bytes]:
        # A blob of more than two parts is fetched as ranges side by side (an eighth of it
        # each, from 8 to 32 MiB; at most 128 MiB held), yielded in order. The last range
        # asks for one byte more than expected, so that a longer object shows as one (the
        # caller's hash then refuses it).
        if size is None or size <= 2 * PART_BYTES:
            yield from super().iter_chunks(key, size)
            return
        path = self.path(key)
        step = min(max(PART_BYTES, -(-size // _PART_SENDERS)), 4 * PART_BYTES)
        starts = iter(range(0, size, step))

        def fetch(start: int) -> bytes:
            end = min(start + step, size)
            return bytes(self.fs.cat_file(path, start=start, end=end + (end == size)))

        ahead = max(2, min(_PART_SENDERS, (16 * PART_BYTES) // step))
        with concurrent.futures.ThreadPoolExecutor(ahead, "modelshelf-parts") as pool:
            window = collections.deque(
                pool.submit(fetch, s) for s in itertools.islice(starts, ahead)
            )
            try:
                while window:
                    data = window.popleft().result()
                    following = next(starts, None)
                    if following is not None:
                        window.append(pool.submit(fetch, following))
                    yield data
                    if len(data) < step and window:  # shorter than expected: stop here
                        return
            finally:
                for future in window:
                    future.cancel()

    def _found(self, prefix: str) -> dict[str, dict[str, Any]]:
        # One listing of the keys that begin with ``prefix/``, asked of its parent: listing
        # the prefix itself costs two more requests when nothing is under it.
        if not prefix:
            return super()._found(prefix)
        parent, _, leaf = self.path(prefix).rpartition("/")
        try:
            found = self.fs.find(parent, prefix=leaf + "/", detail=True)
        except FileNotFoundError:
            return {}
        under = self._strip(self.path(prefix)) + "/"
        return {p: info for p, info in found.items() if self._strip(p).startswith(under)}

    def listed_md5(self, info: dict[str, Any]) -> str | None:
        # S3: the ETag of an object uploaded whole, unencrypted or SSE-S3, is its MD5 (others,
        # multipart "...-N" or SSE-KMS, are not; a reader that checks the bytes finds out).
        # GCS: md5Hash, base64 (a composed object has none).
        etag = info.get("ETag")
        if isinstance(etag, str) and _MD5_HEX.fullmatch(etag.strip('"')):
            return etag.strip('"').lower()
        md5 = info.get("md5Hash")
        if isinstance(md5, str):
            with contextlib.suppress(ValueError, binascii.Error):
                raw = base64.b64decode(md5, validate=True)
                if len(raw) == 16:
                    return raw.hex()
        return None

    def create(self, key: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self.path(key), data, mode="create")
        except FileExistsError:
            return False
        return True

    def replace(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.fs.pipe_file(self.path(key), data)

    def upload(self, source: str | os.PathLike[str], key_for: KeyFor, expected: str | None) -> str:
        if expected is None:  # hash first: the upload goes to its final key, never copied there
            expected = hash_chunks(file_chunks(source))[0]
        changed = ChangedWhileReading(source)
        return self._write_final(key_for(expected), file_chunks(source), expected, changed)[0]

    def put_stream(
        self, chunks: Chunks, key_for: KeyFor, expected: str | None = None
    ) -> tuple[str, int]:
        # Two passes, hashing first (unless the caller did), so that the upload goes straight
        # to its final key (and is skipped when those bytes are stored already).
        if expected is None:
            digest, size = hash_chunks(chunks())
            if self.exists(key_for(digest)):
                return digest, size
            expected = digest
        return self._write_final(
            key_for(expected), chunks(), expected, ChangedWhileReading(IN_MEMORY)
        )

    def _write_final(
        self, key: str, chunks: Iterable[Any], expected: str, changed: Exception
    ) -> tuple[str, int]:
        """Upload to the final key; complete it only if the bytes hash to ``expected`` (else
        abort, so nothing becomes visible, and raise ``changed``)."""
        if hasattr(self.fs, "call_s3") and hasattr(self.fs, "split_path"):  # s3fs
            return _PartsUpload(self.fs, self.path(key)).send(chunks, expected, changed)
        if _is_gcs(self.fs):
            parts = _ComposedUpload(self.fs, self.path(key), self.path(self._tmp_key()))
            return parts.send(chunks, expected, changed)
        f = self.fs.open(self.path(key), "wb")
        try:
            digest, size = write_hashed(chunks, f)
            if digest != expected:
                raise changed
        except BaseException:
            _discard(f)
            raise
        f.close()
        return digest, size


def _is_gcs(fs: Any) -> bool:
    protocol = fs.protocol
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "gs" in protocols and callable(getattr(fs, "merge", None))


def _discard(f: Any) -> None:
    """Abandon a half-written remote file so that nothing becomes visible."""
    discard = getattr(f, "discard", None)
    if discard is not None:
        with contextlib.suppress(Exception):
            discard()
    with contextlib.suppress(Exception):
        f.closed = True


#: An upload to S3 larger than one part goes up in parts of PART_BYTES (PART_BYTES more every
#: 1,000 parts: 10,000, S3's most, then hold 430 GiB), sent side by side.
PART_BYTES = 8 << 20
#: Parts read but not yet sent, across all uploads of this process (memory: 16 x 8 MiB).
_PARTS_IN_FLIGHT = threading.BoundedSemaphore(16)
_PART_SENDERS = 8


class _Upload:
    """One object written to a bucket from bytes cut in parts (``_parts``), hashed as they are
    read. One part is one upload, sent once its hash is known to be right. More are sent side
    by side (``_part``) while the next ones are read and hashed, and made into the object
    (``_finish``) only once the whole hashed to what was expected; any failure abandons them
    (``_abandon``): nothing partial ever becomes visible."""

    def __init__(self, fs: Any, path: str) -> None:
        self.fs = fs
        self.path = path

    def send(self, chunks: Iterable[Any], expected: str, changed: Exception) -> tuple[str, int]:
        hasher = hashlib.sha256()
        parts = _parts(chunks, hasher)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:  # one part: one upload, once its bytes are known to be right
            if hasher.hexdigest() != expected:
                raise changed
            self.fs.pipe_file(self.path, first)
            report(len(first))
            return expected, len(first)
        self._begin()
        size = 0
        try:
            sent: list[concurrent.futures.Future[Any]] = []
            with concurrent.futures.ThreadPoolExecutor(_PART_SENDERS, "modelshelf-parts") as pool:
                try:
                    for number, body in enumerate(itertools.chain([first, second], parts), 1):
                        size += len(body)
                        sent.append(_send_part(pool, self._part, number, body))
                        del body
                    results = [future.result() for future in sent]
                except BaseException:
                    for future in sent:
                        future.cancel()
                    concurrent.futures.wait(sent)
                    raise
            if hasher.hexdigest() != expected:
                raise changed
            self._finish(results)
        except BaseException:
            with contextlib.suppress(Exception):
                self._abandon()
            raise
        self.fs.invalidate_cache(self.path)
        return expected, size

    def _begin(self) -> None:
        pass

    def _part(self, number: int, body: bytes) -> Any:
        raise NotImplementedError

    def _finish(self, results: list[Any]) -> None:
        raise NotImplementedError

    def _abandon(self) -> None:
        pass


class _PartsUpload(_Upload):
    """S3, through s3fs's ``call_s3``: a multipart upload, completed only if the whole hashed
    right, else aborted (no upload is left open)."""

    def __init__(self, fs: Any, path: str) -> None:
        super().__init__(fs, path)
        self.bucket, self.key, _ = fs.split_path(path)
        self.uid: str | None = None

    def _begin(self) -> None:
        upload = self.fs.call_s3("create_multipart_upload", Bucket=self.bucket, Key=self.key)
        self.uid = upload["UploadId"]

    def _part(self, number: int, body: bytes) -> str:
        out = self.fs.call_s3(
            "upload_part", Bucket=self.bucket, Key=self.key, UploadId=self.uid,
            PartNumber=number, Body=body,
        )  # fmt: skip
        report(len(body))
        return str(out["ETag"])

    def _finish(self, results: list[Any]) -> None:
        self.fs.call_s3(
            "complete_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=self.uid,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(results, 1)]
            },
        )  # fmt: skip

    def _abandon(self) -> None:
        self.fs.call_s3(
            "abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=self.uid
        )


def _send_part(
    pool: concurrent.futures.ThreadPoolExecutor, send: Any, *args: Any
) -> concurrent.futures.Future[Any]:
    """``send(*args)`` on ``pool``, in a copy of this context (progress listeners live there),
    once fewer than 16 parts are held across the process (read, not yet sent)."""
    _PARTS_IN_FLIGHT.acquire()
    try:
        future = pool.submit(contextvars.copy_context().run, send, *args)
    except BaseException:
        _PARTS_IN_FLIGHT.release()
        raise
    future.add_done_callback(lambda _f: _PARTS_IN_FLIGHT.release())
    return future


#: GCS composes at most 32 objects into one (``merge``); more are composed in rounds.
_COMPOSE_MOST = 32


class _ComposedUpload(_Upload):
    """GCS, through gcsfs, whose resumable uploads take their parts in order: the parts go up
    as temporary objects (``tmp/<uuid>-<n>``), composed into the object (gcsfs's ``merge``:
    GCS's compose, 32 sources at a time) only once the whole hashed right. The temporary
    objects are deleted either way (gc removes any a crash leaves, after a day)."""

    def __init__(self, fs: Any, path: str, tmp_path: str) -> None:
        super().__init__(fs, path)
        self.tmp = tmp_path  # the temporary objects' common beginning
        self.made: list[str] = []

    def _part(self, number: int, body: bytes) -> str:
        path = f"{self.tmp}-{number:05d}"
        self.made.append(path)
        self.fs.pipe_file(path, body)
        report(len(body))
        return path

    def _finish(self, results: list[Any]) -> None:
        """Compose the parts (in order) into the object; in rounds of 32 when there are more,
        whose results are temporary objects too."""
        try:
            level, round_ = list(results), 0
            while len(level) > _COMPOSE_MOST:
                round_ += 1
                groups = [level[i : i + _COMPOSE_MOST] for i in range(0, len(level), _COMPOSE_MOST)]
                level = [f"{self.tmp}-r{round_}-{j:05d}" for j in range(len(groups))]
                for target, group in zip(level, groups, strict=True):
                    self.made.append(target)
                    self.fs.merge(target, group)
            self.fs.merge(self.path, level)
        finally:
            with contextlib.suppress(Exception):
                self._abandon()  # the temporary objects, not needed any more

    def _abandon(self) -> None:
        made, self.made = self.made, []
        if made:
            self.fs.rm(made)


def _parts(chunks: Iterable[Any], hasher: Any) -> Iterator[bytes]:
    """The bytes of ``chunks`` cut into parts (PART_BYTES, PART_BYTES more every 1,000), each
    fed to ``hasher`` as it is read; a last part may be shorter (or empty, for no bytes)."""
    part = bytearray()
    number = 0
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        hasher.update(view)
        while len(view):
            room = PART_BYTES * (1 + number // 1000) - len(part)
            part += view[:room]
            view = view[room:]
            if len(part) == PART_BYTES * (1 + number // 1000):
                yield bytes(part)
                part = bytearray()
                number += 1
    if part or number == 0:
        yield bytes(part)
