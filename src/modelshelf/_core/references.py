"""Reference entries: files that stay where they are (file://, s3://, https://, ...).

A reference records the URI, size and the ETag the server gives (S3, most HTTP servers) and,
with ``checksum=True``, the sha256 of the bytes. ``download`` fetches and checks them;
``verify`` tells a changed or missing target.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import fsspec

from .._errors import (
    IntegrityError,
    InvalidReferenceError,
    MissingDependencyError,
    NotFoundError,
    UnsafeLoadError,
)
from .._format.manifest import FileEntry
from .._storage.hashing import hash_chunks, reader_chunks
from . import hashcache

#: Folders whose files ``file://`` references logged elsewhere may name (os.pathsep-separated).
TRUSTED_PATHS_ENV = "MODELSHELF_TRUSTED_PATHS"

_EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs")}
SUPPORTED = ("file", "s3", "gs", "gcs", "http", "https", "memory")


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    scheme = urlparse(uri).scheme
    if scheme not in SUPPORTED:
        raise InvalidReferenceError(
            f"Cannot reference {uri!r}: the scheme {scheme!r} is not supported. Use one of "
            + ", ".join(f"{s}://" for s in SUPPORTED)
            + " (a local file as file:///absolute/path).",
            value=uri,
        )
    try:
        return fsspec.core.url_to_fs(uri)  # type: ignore[no-any-return]
    except ImportError:
        package, extra = _EXTRAS.get(scheme, ("aiohttp", "all"))
        raise MissingDependencyError(package, extra, f"A {scheme}:// reference") from None


def _etag(info: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "e_tag"):
        if info.get(key):
            return str(info[key]).strip('"')
    return None


def _mtime(info: dict[str, Any]) -> float | None:
    value = info.get("mtime")
    return float(value) if isinstance(value, (int, float)) else None


def _strip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return str(fs._strip_protocol(path))  # noqa: SLF001 - fsspec's own path normaliser


def scan(uri: str, name: str | None, checksum: bool) -> dict[str, FileEntry]:
    """Return the entries for ``uri``: one file, or every file under a folder or prefix."""
    fs, path = _fs(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise NotFoundError(f"Cannot reference {uri!r}: nothing exists there.") from None
    base_name = name or posixpath.basename(path.rstrip("/")) or "reference"
    if info.get("type") == "directory":
        files = sorted(fs.find(path, detail=True).items())
        if not files:
            raise NotFoundError(f"Cannot reference {uri!r}: the folder or prefix is empty.")
        root = _strip(fs, path).rstrip("/")
        out = {}
        for p, finfo in files:
            rel = _strip(fs, p)[len(root) + 1 :]
            out[f"{base_name}/{rel}"] = _entry(fs, p, fs.unstrip_protocol(p), finfo, checksum)
    else:
        out = {base_name: _entry(fs, path, uri, info, checksum)}
    local = [e.ref["uri"] for e in out.values() if e.ref and _is_local(e.ref["uri"])]
    if local:
        hashcache.remember_references(local)
    return out


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("file", "local")


def _check_local(relpath: str, uri: str, path: str) -> None:
    """A ``file://`` reference names a file of *this* machine. One that this machine did not
    log (a shelf someone else wrote) is followed only inside MODELSHELF_TRUSTED_PATHS."""
    if hashcache.logged_reference(uri):
        return
    real = os.path.realpath(path)
    for base in os.environ.get(TRUSTED_PATHS_ENV, "").split(os.pathsep):
        if base and (real + os.sep).startswith(os.path.realpath(base).rstrip(os.sep) + os.sep):
            return
    raise UnsafeLoadError(
        f"The reference {relpath!r} points to {uri!r}, a file on this machine that this machine "
        "did not log: a shelf someone else wrote could name any of your files. If you trust "
        f"it, add its folder to {TRUSTED_PATHS_ENV} (paths separated by {os.pathsep!r}).",
        path=relpath,
    )


def _entry(
    fs: fsspec.AbstractFileSystem, path: str, uri: str, info: dict[str, Any], checksum: bool
) -> FileEntry:
    ref: dict[str, Any] = {"uri": uri}
    etag = _etag(info)
    if etag:
        ref["etag"] = etag
    mtime = _mtime(info)
    if mtime is not None and urlparse(uri).scheme == "file":
        ref["mtime"] = mtime
    digest = None
    size = info.get("size")
    if checksum:
        with fs.open(path, "rb") as f:
            hexdigest, size = hash_chunks(reader_chunks(f))
        digest = f"sha256:{hexdigest}"
    if size is None:
        raise InvalidReferenceError(
            f"Cannot reference {uri!r} without checksum: the server does not report its size. "
            "Use checksum=True.",
            value=uri,
        )
    return FileEntry(size=int(size), digest=digest, ref=ref)


def _current(
    relpath: str, entry: FileEntry
) -> tuple[fsspec.AbstractFileSystem, str, dict[str, Any]]:
    assert entry.ref is not None
    uri = entry.ref["uri"]
    fs, path = _fs(uri)
    if _is_local(uri):
        _check_local(relpath, uri, path)
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
    except FileNotFoundError:
        raise IntegrityError(
            f"The reference {relpath!r} points to {uri!r}, which no longer exists.",
            files=[relpath],
        ) from None
    return fs, path, info


def _changed(relpath: str, entry: FileEntry, what: str) -> IntegrityError:
    assert entry.ref is not None
    return IntegrityError(
        f"The reference {relpath!r} ({entry.ref['uri']!r}) changed since it was logged: {what}.",
        files=[relpath],
    )


def check(relpath: str, entry: FileEntry) -> None:
    """Raise IntegrityError if the referenced target is missing or changed."""
    assert entry.ref is not None
    fs, path, info = _current(relpath, entry)
    size = info.get("size")
    if size is not None and int(size) != entry.size:
        raise _changed(relpath, entry, f"size {size} instead of {entry.size}")
    etag = entry.ref.get("etag")
    if etag and _etag(info) != etag:
        raise _changed(relpath, entry, f"ETag {_etag(info)!r} instead of {etag!r}")
    if entry.digest and not etag:
        with fs.open(path, "rb") as f:
            hexdigest, _ = hash_chunks(reader_chunks(f))
        if f"sha256:{hexdigest}" != entry.digest:
            raise _changed(relpath, entry, "its sha256 differs")


def fetch(relpath: str, entry: FileEntry) -> Iterator[bytes]:
    """Yield the referenced bytes after checking the target's size and ETag."""
    assert entry.ref is not None
    fs, path, info = _current(relpath, entry)
    etag = entry.ref.get("etag")
    if etag and _etag(info) != etag:
        raise _changed(relpath, entry, f"ETag {_etag(info)!r} instead of {etag!r}")
    with fs.open(path, "rb") as f:
        yield from reader_chunks(f)
