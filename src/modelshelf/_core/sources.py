"""Where the bytes of a file to commit come from: a local file, bytes made on the fly, or
another shelf's blobs. Each knows how to store itself in a repository (again, if gc took it)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .._format.layout import blob_key
from .._format.manifest import FileEntry
from .._storage import Storage

if TYPE_CHECKING:
    from .repository import Repository


class Source(Protocol):
    """A file of a version being committed."""

    def store(self, repo: Repository) -> FileEntry:
        """Put the file's bytes on ``repo`` (skipping what is there) and describe them."""


@dataclass(frozen=True)
class LocalFile:
    """A local file waiting to be stored."""

    path: Path

    def store(self, repo: Repository) -> FileEntry:
        hexdigest, size = repo.put_file(self.path)
        return FileEntry(size=size, digest=f"sha256:{hexdigest}")


@dataclass(frozen=True)
class StreamedFile:
    """Bytes made on the fly (a safetensors file written from tensors in memory); ``chunks``
    is called once per pass over them."""

    chunks: Callable[[], Iterable[Any]]

    def store(self, repo: Repository) -> FileEntry:
        hexdigest, size = repo.storage.put_stream(self.chunks, blob_key)
        return FileEntry(size=size, digest=f"sha256:{hexdigest}")


@dataclass(frozen=True)
class CopiedFile:
    """A file of another shelf's version: only the blobs the target lacks are sent."""

    source: Storage
    entry: FileEntry
    fetch: Callable[[Storage, str], Path]  # a verified local copy of one of ``source``'s blobs

    def store(self, repo: Repository) -> FileEntry:
        for hexdigest in sorted(self.entry.blob_hexes()):
            if not repo.storage.exists(blob_key(hexdigest)):
                repo.storage.upload(self.fetch(self.source, hexdigest), blob_key, hexdigest)
        return self.entry


@dataclass(frozen=True)
class Referenced:
    """A file that stays where it is (a reference entry): nothing to store."""

    entry: FileEntry

    def store(self, repo: Repository) -> FileEntry:
        return self.entry
