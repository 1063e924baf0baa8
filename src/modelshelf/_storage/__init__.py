"""Storage backends: one class per kind of filesystem, behind the contract in ``base``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec

from .base import ChangedWhileReading, Storage
from .local import LocalStorage
from .memory import MemoryStorage
from .objectstore import PROTOCOLS as OBJECT_STORE_PROTOCOLS
from .objectstore import ObjectStoreStorage

__all__ = [
    "ChangedWhileReading",
    "LocalStorage",
    "MemoryStorage",
    "ObjectStoreStorage",
    "Storage",
    "open_storage",
]


def open_storage(url: str, storage_options: dict[str, Any] | None = None) -> Storage:
    """Return the Storage for a root URL or local path, of the class its filesystem needs."""
    if "://" not in url or url.startswith("file://"):
        path = url[len("file://") :] if url.startswith("file://") else url
        return LocalStorage(str(Path(path).expanduser().absolute()))
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    cls: type[Storage] = Storage
    if "memory" in protocols:
        cls = MemoryStorage
    elif any(p in OBJECT_STORE_PROTOCOLS for p in protocols):
        cls = ObjectStoreStorage
    return cls(fs, path, url.rstrip("/"))
