"""The one sha256 helper set: hash a file, hash chunks, or write chunks while hashing them."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import IO, Any

from .._config import CHUNK_SIZE
from .._progress import report


def nbytes(chunk: Any) -> int:
    """The size in bytes of a buffer (bytes, memoryview, a numpy array's data, ...)."""
    return len(memoryview(chunk).cast("B"))


def file_chunks(source: str | os.PathLike[str]) -> Iterator[bytes]:
    """The bytes of a local file, CHUNK_SIZE at a time."""
    with open(source, "rb", buffering=0) as src:
        while chunk := src.read(CHUNK_SIZE):
            yield chunk


def reader_chunks(f: IO[bytes]) -> Iterator[bytes]:
    """The bytes of an open binary file, CHUNK_SIZE at a time."""
    while chunk := f.read(CHUNK_SIZE):
        yield chunk


def hash_chunks(chunks: Iterable[Any]) -> tuple[str, int]:
    """Return ``(sha256 hex, size)`` of the concatenated buffers."""
    h, size = hashlib.sha256(), 0
    for chunk in chunks:
        h.update(chunk)
        size += nbytes(chunk)
    return h.hexdigest(), size


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a local file, read in chunks."""
    return hash_chunks(file_chunks(path))[0]


class Hasher:
    """Feeds chunks to sha256 on a second thread, so hashing overlaps reading and writing.

    Small chunks that come before any large one are hashed at once, in the caller's thread:
    the thread starts with the first large chunk, so a small file costs no thread at all.
    """

    #: Chunks smaller than this, before the thread starts, are hashed in the caller's thread.
    INLINE = 256 * 1024

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] | None = None
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        assert self._queue is not None
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def update(self, chunk: bytes) -> None:
        if self._queue is None and nbytes(chunk) < self.INLINE:
            self._hash.update(chunk)
            return
        if self._queue is None:
            self._queue = queue.Queue(maxsize=4)
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        return self._hash.hexdigest()

    def abandon(self) -> None:
        """Stop the hashing thread without waiting for the chunks still queued."""
        if self._queue is None:
            return
        while True:
            try:
                self._queue.put_nowait(None)
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()


def write_hashed(chunks: Iterable[Any], f: IO[bytes]) -> tuple[str, int]:
    """Write buffers to ``f`` while a second thread hashes them; return (sha256, size)."""
    hasher, size = Hasher(), 0
    try:
        for chunk in chunks:
            hasher.update(chunk)
            f.write(chunk)
            n = nbytes(chunk)
            size += n
            report(n)
    except BaseException:
        hasher.abandon()
        raise
    return hasher.hexdigest(), size
