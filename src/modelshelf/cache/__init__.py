"""The local download cache (``$MODELSHELF_CACHE`` or ``~/.cache/modelshelf``).

Example:
    >>> ms.cache.info()
    CacheInfo(path=..., bytes=..., blobs=..., versions=...)
    >>> ms.cache.prune(max_bytes=10 * 2**30)   # least recently used first
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .._config import cache_dir
from .._core import hashcache as _hashcache
from .._errors import InvalidArgumentError
from .._format.layout import CachePaths
from .._storage.hashing import sha256_file

__all__ = ["CacheInfo", "PruneReport", "info", "prune"]


@dataclass(frozen=True)
class CacheInfo:
    path: Path
    bytes: int
    blobs: int
    versions: int


@dataclass(frozen=True)
class PruneReport:
    freed_bytes: int
    freed_blobs: int
    bytes_left: int


def _blobs(root: Path) -> dict[str, tuple[Path, int, float]]:
    out = {}
    for path in CachePaths(root).blobs.glob("*/*"):
        st = path.stat()
        out[path.name] = (path, st.st_size, st.st_mtime)
    return out


def _version_dirs(root: Path) -> list[Path]:
    paths = CachePaths(root)
    return [p for p in paths.shelves.glob(paths.VERSION_GLOB) if p.is_dir()]


def info() -> CacheInfo:
    """Where the cache is, the bytes it holds, and how many blobs and versions."""
    root = cache_dir()
    blobs = _blobs(root)
    return CacheInfo(
        root, sum(s for _, s, _ in blobs.values()), len(blobs), len(_version_dirs(root))
    )


def prune(max_bytes: int) -> PruneReport:
    """Free the least recently used blobs until the cache holds at most ``max_bytes``.

    Version folders lose the files whose blobs go (they come back on the next download).
    """
    if not isinstance(max_bytes, int) or max_bytes < 0:
        raise InvalidArgumentError(f"max_bytes must be a non-negative int, not {max_bytes!r}.")
    root = cache_dir()
    blobs = _blobs(root)
    total = sum(s for _, s, _ in blobs.values())
    used = _hashcache.last_used()
    order = sorted(blobs, key=lambda h: used.get(h, blobs[h][2]))
    victims: list[str] = []
    for h in order:
        if total <= max_bytes:
            break
        victims.append(h)
        total -= blobs[h][1]
    if not victims:
        return PruneReport(0, 0, total)
    inodes = {os.stat(blobs[h][0]).st_ino for h in victims}
    # Where the cache's filesystem has no hard links, version folders hold copies: a copy of
    # the size of a victim is hashed to tell whether it is one.
    sizes = {blobs[h][1] for h in victims}
    for folder in _version_dirs(root):
        for dirpath, _dirs, files in os.walk(folder):
            for name in files:
                path = Path(dirpath) / name
                st = path.stat()
                if st.st_ino in inodes or (
                    st.st_nlink == 1 and st.st_size in sizes and sha256_file(path) in victims
                ):
                    path.unlink()
    freed = 0
    for h in victims:
        freed += blobs[h][1]
        _hashcache.forget(blobs[h][0])
        blobs[h][0].unlink(missing_ok=True)
    return PruneReport(freed, len(victims), total)
