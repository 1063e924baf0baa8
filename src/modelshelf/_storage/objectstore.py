"""Object stores (S3, GCS, Azure): writes become visible whole, or not at all, on completion."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
from collections.abc import Iterable
from typing import Any

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


def _discard(f: Any) -> None:
    """Abandon a half-written remote file so that nothing becomes visible."""
    discard = getattr(f, "discard", None)
    if discard is not None:
        with contextlib.suppress(Exception):
            discard()
    with contextlib.suppress(Exception):
        f.closed = True
