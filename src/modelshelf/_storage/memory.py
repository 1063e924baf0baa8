"""``memory://`` shelves: fsspec's MemoryFileSystem, with create-if-absent made atomic."""

from __future__ import annotations

import threading

from .base import Storage

# MemoryFileSystem checks-then-creates; this lock makes creation atomic among a process's threads
# (a memory shelf lives in one process).
_LOCK = threading.Lock()


class MemoryStorage(Storage):
    """A shelf in this process's memory (tests, notebooks): writes are whole at once."""

    creates_can_tear = False

    def _parent(self, key: str) -> None:
        pass  # keys need no folders

    def create(self, key: str, data: bytes) -> bool:
        path = self.path(key)
        with _LOCK:
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
        return True

    def replace(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self.fs.pipe_file(self.path(key), data)
