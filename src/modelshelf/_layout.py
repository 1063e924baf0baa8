"""Where each record lives on a shelf (the layout described in docs/format.md)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import socket
from pathlib import PurePath
from typing import Any

from ._errors import InvalidMetadataError

ROOT_RECORD = "modelshelf.json"


def artifact_prefix(name: str) -> str:
    """``proj/name`` -> ``artifacts/proj/name``; ``name`` -> ``artifacts/_/name``.

    ``_`` cannot start a project name, so no project collides with the unprojected names.
    """
    project, _, base = name.rpartition("/")
    return f"artifacts/{project or '_'}/{base}"


def name_from_prefix(project_dir: str, base: str) -> str:
    return base if project_dir == "_" else f"{project_dir}/{base}"


def versions_prefix(name: str) -> str:
    return f"{artifact_prefix(name)}/versions"


def aliases_prefix(name: str) -> str:
    return f"{artifact_prefix(name)}/aliases"


def state_prefix(name: str, version: int) -> str:
    return f"{artifact_prefix(name)}/state/{version:012d}"


def info_key(name: str) -> str:
    return f"{artifact_prefix(name)}/artifact.json"


def digest_key(name: str, digest: str) -> str:
    return f"{artifact_prefix(name)}/digests/{digest.split(':', 1)[-1]}"


def manifest_key(hexdigest: str) -> str:
    return f"manifests/sha256/{hexdigest[:2]}/{hexdigest}.json"


def lease_key(lease_id: str) -> str:
    return f"leases/{lease_id}.json"


def now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def isoformat(when: _dt.datetime) -> str:
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="microseconds")


def parse_time(text: str) -> _dt.datetime:
    return _dt.datetime.fromisoformat(text)


def human_size(n: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; None -> ``"-"``."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def writer_info() -> dict[str, Any]:
    """Who wrote a record: host, process and user (for audit and crash detection)."""
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER", "")
    return {"host": socket.gethostname(), "pid": os.getpid(), "user": user}


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
