"""A local cache of file digests keyed by stat data, so unchanged files are not hashed again.

Like git's index or DVC's state database: a file whose path, size, mtime, ctime, inode and
device are unchanged since it was hashed keeps its digest. An entry written less than
``RACY_SECONDS`` after the file's last change is not trusted (the file could have changed again
within the same timestamp tick), as in git's "racy clean" rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .._config import cache_dir
from .._format.layout import CachePaths
from .._storage.hashing import sha256_file

RACY_SECONDS = 1.0
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

_LOCK = threading.Lock()
_CONNECTIONS: dict[tuple[str, int], sqlite3.Connection] = {}


def _connect() -> sqlite3.Connection | None:
    db = CachePaths(cache_dir()).hash_db
    key = (str(db), os.getpid())  # a connection must not cross a fork
    conn = _CONNECTIONS.get(key)
    if conn is not None:
        return conn
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(key[0], timeout=30, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a lost entry only costs a re-hash
        conn.execute(
            "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER,"
            " mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, dev INTEGER, digest TEXT)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS blobs (path TEXT PRIMARY KEY, size INTEGER,"
            " mtime_ns INTEGER, ino INTEGER, dev INTEGER, digest TEXT)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS shelf_blobs (path TEXT PRIMARY KEY, size INTEGER,"
            " mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, dev INTEGER, digest TEXT)"
        )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS chunk_files"
            " (digest TEXT PRIMARY KEY, chunks TEXT, key TEXT)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS chunk_files_by_key ON chunk_files (key)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS records"
            " (shelf TEXT, key TEXT, md5 TEXT, data BLOB, at REAL, PRIMARY KEY (shelf, key))"
        )
        conn.execute("CREATE TABLE IF NOT EXISTS used (digest TEXT PRIMARY KEY, at REAL)")
        conn.execute("CREATE TABLE IF NOT EXISTS logged_refs (uri TEXT PRIMARY KEY, at REAL)")
    except (OSError, sqlite3.Error):
        return None  # no writable cache: hash every time
    _CONNECTIONS[key] = conn
    return conn


def _row(sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
    """The first row ``sql`` selects; None without one, or without a usable cache."""
    with _LOCK:
        conn = _connect()
        if conn is None:
            return None
        try:
            row = conn.execute(sql, args).fetchone()
        except sqlite3.Error:
            return None
    return None if row is None else tuple(row)


def _write(sql: str, *rows: tuple[object, ...]) -> None:
    """Run ``sql`` for each of ``rows``; a cache that cannot take them only costs re-hashing."""
    with _LOCK:
        conn = _connect()
        if conn is None:
            return
        try:
            conn.execute("BEGIN")  # one transaction for all the rows
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def lookup(path: str | os.PathLike[str], st: os.stat_result | None = None) -> str | None:
    """Return the cached hex sha256 of ``path`` if its stat data is unchanged, else None."""
    real = os.path.realpath(path)
    st = st or os.stat(real)
    row = _row(
        "SELECT size, mtime_ns, ctime_ns, ino, dev, digest FROM hashes WHERE path=?", (real,)
    )
    if row is None or tuple(row[:5]) != _stat_key(st):
        return None
    return str(row[5])


def remember(
    path: str | os.PathLike[str], digest: str, st: os.stat_result, *, written_by_us: bool = False
) -> None:
    """Record the digest of ``path`` for the stat data ``st`` taken before it was read.

    ``written_by_us``: the caller wrote these very bytes (a cache file), so the racy-clean
    rule, which guards against another writer, does not apply.
    """
    changed = max(st.st_mtime_ns, st.st_ctime_ns) / 1e9
    if not written_by_us and time.time() - changed < RACY_SECONDS:
        return
    real = os.path.realpath(path)
    _write(
        "INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?, ?, ?)", (real, *_stat_key(st), digest)
    )


def file_digest(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a local file, from the cache when its stat data is unchanged."""
    st = os.stat(path)
    cached = lookup(path, st)
    if cached is not None:
        return cached
    digest = sha256_file(path)
    if _stat_key(os.stat(path)) == _stat_key(st):
        remember(path, digest, st)
    return digest


# -- blobs of the download cache -----------------------------------------------------------
# A cache blob is written by modelshelf, read-only, under its own digest, and was checked
# against that digest when it entered the cache. After that, as git and huggingface_hub do, its
# size, mtime, inode and device are enough to trust it; the ctime is left out, because every
# hard link to the blob (one per version folder that holds it) moves it.


def _blob_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def trust_blob(path: str | os.PathLike[str], digest: str, st: os.stat_result) -> None:
    """Record that the cache blob ``path`` (stat data ``st``) was checked to hold ``digest``."""
    _write(
        "INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?, ?, ?)",
        (os.path.realpath(path), *_blob_key(st), digest),
    )


def trusted_blob(path: str | os.PathLike[str], digest: str) -> bool:
    """Whether the cache blob ``path`` is, by its stat data, the one checked to hold ``digest``."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return False
    row = _row("SELECT size, mtime_ns, ino, dev, digest FROM blobs WHERE path=?", (real,))
    return row is not None and tuple(row[:4]) == _blob_key(st) and row[4] == digest


def trust_if_unchanged(path: str | os.PathLike[str], digest: str, st: os.stat_result) -> None:
    """Trust ``path`` to hold ``digest`` (just checked) if its stat data are still ``st``: it
    did not change while it was being hashed."""
    with contextlib.suppress(OSError):
        if _blob_key(os.stat(path)) == _blob_key(st):
            trust_blob(path, digest, st)


# A blob on a local shelf is another matter: whoever can write the shelf's folder can write
# its bytes again and set its mtime back (``os.utime``), which no stat key without the ctime
# notices. The ctime cannot be set back, and nothing links a shelf's blobs: a shelf blob is
# trusted by its full stat key (``_stat_key``: size, mtime, ctime, inode and device).


def trusted_shelf_blob(path: str | os.PathLike[str], digest: str, st: os.stat_result) -> bool:
    """Whether the blob of a local shelf at ``path`` (stat data ``st``) is, by all its stat
    data, the one this machine hashed to ``digest``."""
    row = _row(
        "SELECT size, mtime_ns, ctime_ns, ino, dev, digest FROM shelf_blobs WHERE path=?",
        (os.path.realpath(path),),
    )
    return row is not None and tuple(row[:5]) == _stat_key(st) and row[5] == digest


def changed_since(path: str | os.PathLike[str], st: os.stat_result) -> bool:
    """Whether the file at ``path`` is no longer, by its stat data, the one of ``st``."""
    try:
        return _stat_key(os.stat(path)) != _stat_key(st)
    except OSError:
        return True


def trust_shelf_blob_if_unchanged(
    path: str | os.PathLike[str], digest: str, st: os.stat_result
) -> None:
    """Trust the shelf blob ``path`` to hold ``digest`` (just checked) if its stat data are
    still ``st``: it did not change while it was being hashed."""
    if not changed_since(path, st):
        _write(
            "INSERT OR REPLACE INTO shelf_blobs VALUES (?, ?, ?, ?, ?, ?, ?)",
            (os.path.realpath(path), *_stat_key(st), digest),
        )


def verify_blob(path: str | os.PathLike[str], digest: str) -> bool:
    """Hash the cache blob ``path`` again; whether it holds ``digest`` (then it is trusted)."""
    st = os.stat(path)
    if sha256_file(path) != digest:
        return False
    trust_if_unchanged(path, digest, st)
    return True


# -- files stored in chunks ------------------------------------------------------------------
# A file is the concatenation of its chunks, so chunks with the same digests, in the same
# order, make a file with the same digest: one hashing pass over the chunks then stands for
# two (a re-log of an unchanged model hashes each byte once).


def _chunks_key(chunks: Sequence[tuple[str, int]]) -> str:
    return hashlib.sha256(json.dumps(list(chunks)).encode()).hexdigest()


def whole_digest(chunks: Sequence[tuple[str, int]]) -> str | None:
    """The digest recorded for the file made of ``chunks`` ((digest, size) in order)."""
    row = _row("SELECT digest FROM chunk_files WHERE key=?", (_chunks_key(chunks),))
    return None if row is None else str(row[0])


def remember_whole(chunks: Sequence[tuple[str, int]], digest: str) -> None:
    """Record that the file made of ``chunks`` hashed to ``digest`` (looked up both ways: a
    local file whose digest the stat cache knows then needs no reading to know its chunks)."""
    _write(
        "INSERT OR REPLACE INTO chunk_files VALUES (?, ?, ?)",
        (digest, json.dumps(list(chunks)), _chunks_key(chunks)),
    )


def chunks_of(digest: str) -> list[tuple[str, int]] | None:
    """The chunks recorded for the file of ``digest`` (hex), if any."""
    row = _row("SELECT chunks FROM chunk_files WHERE digest=?", (digest,))
    if row is None:
        return None
    try:
        chunks = [(str(d), int(n)) for d, n in json.loads(row[0])]
    except (ValueError, TypeError):
        return None
    ok = all(_DIGEST.fullmatch(d) and n >= 0 for d, n in chunks)
    return chunks if ok else None  # a damaged cache costs a re-hash, never a wrong entry


def forget(path: str | os.PathLike[str]) -> None:
    _write("DELETE FROM hashes WHERE path=?", (os.path.realpath(path),))


def _stamp(table: str, keys: list[str]) -> None:
    """Record ``keys`` in ``table`` (``used`` or ``logged_refs``) with the time now."""
    at = time.time()
    _write(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", *[(k, at) for k in keys])


def mark_used(digests: list[str]) -> None:
    """Record that cached blobs were just used (for least-recently-used pruning)."""
    _stamp("used", digests)


def remember_references(uris: list[str]) -> None:
    """Record ``file://`` references this machine logged (they may be followed on download)."""
    _stamp("logged_refs", uris)


def logged_reference(uri: str) -> bool:
    """Whether this machine logged the reference ``uri``."""
    return _row("SELECT 1 FROM logged_refs WHERE uri=?", (uri,)) is not None


def last_used() -> dict[str, float]:
    with _LOCK:
        conn = _connect()
        if conn is None:
            return {}
        try:
            return {str(d): float(at) for d, at in conn.execute("SELECT digest, at FROM used")}
        except sqlite3.Error:
            return {}


# -- records of shelves on object stores ---------------------------------------------------
#: At most this many records are kept (about 1 KB each); past it, the older half goes.
MAX_RECORDS = 50_000
_SQL_VARIABLES = 500  # keys per query, under SQLite's limit on bound parameters


class SeenRecords:
    """Log records of the shelf at ``shelf`` (its URL) that this machine read or wrote, kept
    by key and the MD5 of their bytes (a ``RecordStore`` for ``RecordCache``).

    A record is handed out only for the MD5 that a fresh listing of the bucket reports for its
    key, and is kept only when its bytes have that MD5: what is handed out is what the bucket
    holds now, whatever happened to the key meanwhile. The URL is part of the key, so that no
    shelf can place a record (two byte strings of one MD5 can be made) where another shelf's
    is looked up.
    """

    _writes = 0  # records kept by this process, to prune now and then

    def __init__(self, shelf: str) -> None:
        self.shelf = shelf

    def recall(self, wanted: Mapping[str, str]) -> dict[str, bytes]:
        keys = list(wanted)
        out: dict[str, bytes] = {}
        with _LOCK:
            conn = _connect()
            if conn is None:
                return {}
            for i in range(0, len(keys), _SQL_VARIABLES):
                part = keys[i : i + _SQL_VARIABLES]
                marks = ",".join("?" * len(part))
                try:
                    rows = conn.execute(
                        f"SELECT key, md5, data FROM records WHERE shelf=? AND key IN ({marks})",
                        (self.shelf, *part),
                    ).fetchall()
                except sqlite3.Error:
                    return out
                out.update({k: bytes(d) for k, m, d in rows if wanted.get(k) == m})
        return out

    def keep(self, rows: Sequence[tuple[str, str, bytes]]) -> None:
        at = time.time()
        good = [
            (self.shelf, key, md5, data, at)
            for key, md5, data in rows
            if hashlib.md5(data, usedforsecurity=False).hexdigest() == md5
        ]
        if not good:
            return
        _write("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)", *good)
        SeenRecords._writes += len(good)
        if SeenRecords._writes >= 1000:
            SeenRecords._writes = 0
            prune_records()


def prune_records(limit: int = MAX_RECORDS) -> None:
    """Forget the older half of the kept records when there are more than ``limit``."""
    count = _row("SELECT COUNT(*) FROM records", ())
    if count is not None and count[0] > limit:
        _write(
            "DELETE FROM records WHERE rowid IN"
            " (SELECT rowid FROM records ORDER BY at, rowid LIMIT ?)",
            (count[0] - limit // 2,),
        )
