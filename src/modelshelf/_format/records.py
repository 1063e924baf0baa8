"""The shape of every record on a shelf (one ``TypedDict`` each), and how records are coded.

Records are JSON objects, written compactly with sorted keys. A record read back that is not
a JSON object is damage, reported as ``IntegrityError`` naming where it was read.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import socket
from pathlib import PurePath
from typing import Any, TypedDict

from .._errors import IntegrityError, InvalidMetadataError

Record = dict[str, Any]


# -- the records -----------------------------------------------------------------------------
class WriterInfo(TypedDict):
    host: str
    pid: int
    user: str


class RootRecord(TypedDict):
    """``modelshelf.json``: the shelf's format and id."""

    format: int
    id: str
    created_at: str
    created_by: WriterInfo


class ArtifactInfo(TypedDict):
    """``artifacts/<p>/<name>/artifact.json``: the name's type, fixed by its first log."""

    name: str
    type: str
    created_at: str


class PointerInfo(ArtifactInfo):
    """``artifact.json`` of a name given by a rename: its versions live in the folder of the
    name the artifact was first logged under, ``stored_as``."""

    stored_as: str
    renamed_from: str


class RenamedRecord(TypedDict):
    """``artifacts/<p>/<name>/renamed.json``: the tombstone of a renamed name."""

    to: str
    at: str
    by: WriterInfo


class VersionRecord(TypedDict):
    """``.../versions/<n>.json``: the commit record of version ``n``."""

    name: str
    type: str
    version: int
    digest: str
    manifest: str
    size: int
    file_count: int
    created_at: str
    created_by: WriterInfo
    run_id: str | None
    description: str | None
    metadata: dict[str, Any]
    tags: list[str]


class StateRecord(TypedDict, total=False):
    """``.../state/<n>/<k>.json``: the labels of version ``n`` after change ``k``."""

    tags: list[str]
    description: str | None
    metadata: dict[str, Any]
    deleted: bool
    at: str


class AliasEventRecord(TypedDict):
    alias: str
    to: int | None
    at: str
    run_id: str | None


class AliasRecord(TypedDict):
    """``.../aliases/<k>.json``: every alias after move ``k``, and the moves it made."""

    aliases: dict[str, int]
    events: list[dict[str, Any]]  # AliasEventRecord plus "from" (a Python keyword)
    by: WriterInfo


class LeaseRecord(TypedDict):
    """``leases/<uuid>.json``: the blobs and manifest a writer is about to commit."""

    at: str
    by: WriterInfo
    blobs: list[str]
    manifests: list[str]


class GcRecord(TypedDict):
    """``gc/<k>.json``: a gc pass started."""

    started_at: str
    by: WriterInfo
    dry_run: bool


class EdgeRecord(TypedDict):
    """``runs/<id>/inputs/<k>.json`` and ``outputs/<k>.json``."""

    name: str
    version: int
    at: str


class UsedByRecord(TypedDict):
    """``.../used_by/<n>/<run id>.json``: the reverse index of an input edge."""

    run_id: str
    at: str


class RunEnd(TypedDict):
    """``runs/<id>/end.json``."""

    status: str
    ended_at: str
    error: str | None


# -- coding ----------------------------------------------------------------------------------
#: Every record modelshelf writes opens with the sha256 of the rest: ``{"_sha256":"<hex>",...}``.
#: A record is written whole by a rename or a ``link()`` where the filesystem has them, but on
#: one without hard links (a FUSE mount such as Colab's Google Drive) or on a generic fsspec
#: backend, create-if-absent writes the final name in place: a reader may meet a record still
#: being written, or one a crash left torn. The checksum tells both from a real record.
_SEAL = b'{"_sha256":"'
_SEAL_END = len(_SEAL) + 64


class UnreadableRecord(IntegrityError):
    """A record that does not decode: still being written, torn by a crash, or damaged."""


def dumps(record: Any) -> bytes:
    """The bytes of ``record`` as stored: compact JSON, sorted keys, sealed by its checksum."""
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    if not body.startswith(b"{"):
        return body
    seal = _SEAL + hashlib.sha256(body).hexdigest().encode() + b'"'
    return seal + (b"}" if body == b"{}" else b"," + body[1:])


def _unseal(data: bytes, where: str) -> bytes:
    """The JSON body of a sealed record, checked against its seal (an unsealed record, as
    shelves written before the seal hold, is returned as it is)."""
    if not data.startswith(_SEAL):
        return data
    hexdigest = data[len(_SEAL) : _SEAL_END]
    rest = data[_SEAL_END:]
    if rest[:2] == b'",':
        body = b"{" + rest[2:]
    elif rest == b'"}':
        body = b"{}"
    else:
        body = None
    if body is None or hashlib.sha256(body).hexdigest().encode() != hexdigest:
        raise UnreadableRecord(
            f"The shelf record {where} does not match its checksum: it is still being written, "
            "was torn by a crash, or was changed afterwards."
        )
    return body


def loads(data: bytes, where: str) -> Record:
    """Decode a record read from ``where``; damage raises IntegrityError naming it
    (UnreadableRecord when the bytes do not decode at all)."""
    body = _unseal(data, where)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UnreadableRecord(
            f"The shelf record {where} is not valid JSON ({type(exc).__name__}: {exc!s:.200}); "
            "it is still being written, was torn by a crash, or is damaged."
        ) from None
    if not isinstance(value, dict):
        raise IntegrityError(f"The shelf record {where} is not a JSON object.")
    return value


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def isoformat(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")


def parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text)


def parse_beat(data: bytes | None) -> _dt.datetime | None:
    """The time in a heartbeat file, or None if there is none that parses (a heartbeat is a
    hint: a damaged one reads as absent)."""
    if not data:
        return None
    try:
        when = parse_time(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=_dt.timezone.utc)


def writer_info() -> WriterInfo:
    """Who wrote a record: host, process and user (for audit and crash detection)."""
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER", "")
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user}


# -- user data stored in records -------------------------------------------------------------
def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMetadataError(
                f"Metadata value {value!r} at {where} is not finite; JSON cannot store NaN or "
                "infinity. Store it as None or as a string.",
                value=value,
            )
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidMetadataError(
                    f"Metadata key {k!r} at {where} is not a string; JSON objects need string "
                    "keys.",
                    value=k,
                )
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return _jsonable(value.item(), where)  # numpy / torch scalars
    raise InvalidMetadataError(
        f"Metadata value at {where} is a {type(value).__name__} ({value!r:.80}), which is not "
        "JSON-serialisable. Use str, int, float, bool, None, lists and dicts.",
        value=value,
    )


def clean_metadata(metadata: Any, what: str = "metadata") -> dict[str, Any]:
    """Return a JSON-ready copy of ``metadata``, or raise before anything is written."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidMetadataError(
            f"{what} must be a dict, not {type(metadata).__name__} ({metadata!r:.80}).",
            value=metadata,
        )
    cleaned = _jsonable(metadata, what)
    json.dumps(cleaned, allow_nan=False)
    return cleaned  # type: ignore[no-any-return]
