"""What each page of the web UI shows, read from a shelf through its public objects.

Every function here returns plain data (dicts, lists, numbers, strings) for a template or a
JSON response; nothing here knows about HTTP or HTML. The static report uses the same data.
Everything in it came from a shelf, so it is untrusted: templates escape it, scripts read it
from JSON blocks and set it as text.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .._core.download import chunks_from_shelf
from .._errors import ModelshelfError, NotFoundError
from .._features.cleanup import storage_report
from .._features.diff import config_of, flatten, metrics_of, read_header
from .._features.lineage import run_node, version_node
from .._features.tables import read_table
from .._format.records import parse_time
from .._format.safetensors import first_chunk_header
from .._progress import human_size
from .._shelf import Shelf

T = TypeVar("T")
R = TypeVar("R")

#: Files larger than this are not previewed (a download link is still there).
PREVIEW_MAX_BYTES = 4 * 1024 * 1024
#: Text shown of a previewed file, and rows of a previewed table.
PREVIEW_TEXT_CHARS = 64 * 1024
PREVIEW_ROWS = 50
#: Rows shown of a predictions table diff.
DIFF_ROWS = 200
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
TEXT_SUFFIXES = (".txt", ".md", ".log", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".py", ".json")
TABLE_SUFFIXES = (".csv", ".tsv")


def each(shelf: Shelf, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, eight at a time on an object store, where each is a few
    requests; one after the other elsewhere, where threads would only contend for the GIL
    (three times slower on local disk, measured by benchmarks/ui_pages.py)."""
    if not shelf.repository.storage.lists_heads:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(fn, items))


def when(at: _dt.datetime | None) -> str:
    """A local time to the minute, for tables."""
    return at.astimezone().strftime("%Y-%m-%d %H:%M") if at else ""


def number(value: Any) -> str:
    """A metric for a table cell: 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def finite(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


# -- home ---------------------------------------------------------------------------------
def home(shelf: Shelf, query: str = "") -> dict[str, Any]:
    """Artifacts grouped by type (versions, latest, aliases, size, last update), and what
    happened most recently: new versions, alias moves and runs."""
    rows = artifact_rows(shelf, query)
    unreadable = [r for r in rows if "unreadable" in r]
    rows = [r for r in rows if "unreadable" not in r]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["type"], []).append(r)
    return {
        "query": query,
        "groups": dict(sorted(groups.items())),
        "count": len(rows),
        "activity": activity(shelf, rows),
        "unreadable": unreadable,
    }


def artifact_rows(shelf: Shelf, query: str = "", aliases: bool = True) -> list[dict[str, Any]]:
    """One row per artifact whose name holds ``query``: a summary each (one listing and the
    newest record on a bucket, not every version), several at once."""
    repo = shelf.repository
    names = [n for n in repo.folders() if query.lower() in n.lower()]

    def row(name: str) -> dict[str, Any] | None:
        try:
            summary = repo.summary(name)
        except NotFoundError:
            return None  # renamed: its new name has its own row
        except (ModelshelfError, OSError) as exc:  # damaged: the others are still shown
            return {"name": name, "unreadable": str(exc)}
        if summary.record is None:
            return None  # every version deleted
        record = summary.record
        try:
            moved = repo.labels.alias_map(name) if aliases else {}
        except (ModelshelfError, OSError):
            moved = {}
        return {
            "name": name,
            "type": record["type"],
            "versions": summary.versions,
            "latest": summary.latest,
            "aliases": sorted(moved.items(), key=lambda kv: (-kv[1], kv[0])),
            "size": record["size"],
            "size_text": human_size(record["size"]),
            "updated": parse_time(record["created_at"]),
        }

    return [r for r in each(shelf, row, names) if r is not None]


def activity(shelf: Shelf, rows: list[dict[str, Any]], limit: int = 15) -> list[dict[str, Any]]:
    """The newest events: each artifact's newest version, the alias moves of the artifacts
    updated last, and runs started; newest first."""
    events: list[dict[str, Any]] = []
    recent = sorted(rows, key=lambda r: r["updated"], reverse=True)[:limit]
    for r in recent:
        events.append(
            {"at": r["updated"], "kind": "version", "name": r["name"], "version": r["latest"]}
        )

    def moves(name: str) -> list[dict[str, Any]]:
        try:
            history = shelf.alias_history(name)
        except (ModelshelfError, OSError):
            return []
        return [
            {"at": e.at, "kind": "alias", "name": name, "alias": e.alias, "version": e.version}
            for e in history
            if e.alias != "latest"
        ]

    for found in each(shelf, moves, [r["name"] for r in recent]):
        events += found
    try:
        runs = shelf.runs()[-limit:]
    except (ModelshelfError, OSError):
        runs = []
    for run in runs:
        events.append(
            {
                "at": run.started_at,
                "kind": "run",
                "run_id": run.id,
                "job_type": run.job_type,
                "status": run.status,
            }
        )
    events.sort(key=lambda e: e["at"], reverse=True)
    return events[:limit]


# -- artifact -----------------------------------------------------------------------------
def artifact(shelf: Shelf, name: str) -> dict[str, Any]:
    """The version table (aliases, tags, metrics as columns, the logging run), the metrics
    over versions for the chart, and the alias history."""
    versions = shelf.versions(name)
    if not versions:
        raise NotFoundError(f"{name!r} has no versions left (every one was deleted).", ref=name)
    rows: list[dict[str, Any]] = []
    for v in versions:
        metrics = {k: val for k, val in metrics_of(v).items() if finite(val)}
        rows.append(
            {
                "ref": v.ref,
                "version": v.version,
                "aliases": v.aliases,
                "tags": v.tags,
                "created": v.created_at,
                "size": v.size,
                "size_text": human_size(v.size),
                "metrics": metrics,
                "run_id": v.run_id,
                "description": v.description or "",
            }
        )
    metric_names = sorted({m for r in rows for m in r["metrics"]})
    chart = {
        "x": [r["version"] for r in rows],
        "series": {m: [r["metrics"].get(m) for r in rows] for m in metric_names},
    }
    history = [
        {
            "alias": e.alias,
            "version": e.version,
            "previous": e.previous,
            "at": e.at,
            "run": e.run_id,
        }
        for e in shelf.alias_history(name)
        if e.alias != "latest"
    ]
    return {
        "name": name,
        "type": versions[-1].type,
        "rows": list(reversed(rows)),  # newest first
        "metrics": metric_names,
        "curves": chart,
        "alias_history": list(reversed(history)),
        "latest": versions[-1].ref,
    }


# -- version ------------------------------------------------------------------------------
def version(shelf: Shelf, ref: str) -> dict[str, Any]:
    """One version: labels, description, metadata, config, files, runs, storage."""
    v = shelf.get(ref)
    run = v.logged_by()
    files = []
    for path, entry in sorted(v.files.items()):
        files.append(
            {
                "path": path,
                "size": entry.size,
                "size_text": human_size(entry.size),
                "digest": entry.digest or "",
                "uri": entry.uri or "",
                "preview": preview_kind(path, entry.size, entry.uri),
            }
        )
    try:
        storage = storage_report(shelf.repository, v)
    except (ModelshelfError, OSError):
        storage = None
    earlier = [o.ref for o in shelf.versions(v.name) if o.version < v.version]
    return {
        "ref": v.ref,
        "name": v.name,
        "version": v.version,
        "type": v.type,
        "aliases": v.aliases,
        "tags": v.tags,
        "description": v.description or "",
        "metadata": v.metadata,
        "metadata_json": json.dumps(v.metadata, indent=2, sort_keys=True, default=str),
        "metrics": {k: number(val) for k, val in metrics_of(v).items()},
        "config": flatten(config_of(v)),
        "created": v.created_at,
        "digest": v.digest,
        "size_text": human_size(v.size),
        "files": files,
        "logged_by": run_row(run) if run is not None else None,
        "used_by": [run_row(r) for r in v.used_by()],
        "storage": storage,
        "previous": earlier[-1] if earlier else None,  # the newest version left before it
    }


def preview_kind(path: str, size: int, uri: str | None) -> str | None:
    """How a file can be previewed: text, json, table, image, tensors; None: not at all."""
    lower = path.lower()
    if uri:
        return None  # a reference: its bytes are elsewhere
    if lower.endswith(".safetensors"):
        return "tensors"  # only the header is shown
    if size > PREVIEW_MAX_BYTES:
        return None
    for suffix in IMAGE_TYPES:
        if lower.endswith(suffix):
            return "image"
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(TABLE_SUFFIXES):
        return "table"
    if lower.endswith(TEXT_SUFFIXES) or "." not in path.rsplit("/", 1)[-1]:
        return "text"
    return None


def preview(shelf: Shelf, ref: str, path: str) -> dict[str, Any]:
    """What the preview of one file shows. The file is read through the cache (checked
    against its digest on the way in)."""
    v = shelf.get(ref)
    if path not in v.files:
        raise NotFoundError(f"{v.ref} has no file {path!r}.", ref=v.ref)
    entry = v.files[path]
    kind = preview_kind(path, entry.size, entry.uri)
    if kind is None:
        return {"kind": None, "path": path, "why": "no preview for this file"}
    if kind == "tensors":
        header = _header_from_chunks(v, path)
        if header is None:
            header, _ = read_header(v.path(path))
        tensors = [
            {
                "name": n,
                "dtype": info["dtype"],
                "shape": info["shape"],
                "numel": math.prod(info["shape"]),
            }
            for n, info in sorted(header.items())
        ]
        return {"kind": kind, "path": path, "tensors": tensors}
    if kind == "image":
        return {"kind": kind, "path": path}
    local = v.path(path)
    if kind == "table":
        columns, rows = read_table(local)
        return {
            "kind": kind,
            "path": path,
            "columns": columns,
            "rows": [[r.get(c, "") for c in columns] for r in rows[:PREVIEW_ROWS]],
            "total": len(rows),
        }
    text = local.read_bytes()[:PREVIEW_TEXT_CHARS].decode("utf-8", errors="replace")
    if kind == "json":
        try:
            text = json.dumps(json.loads(local.read_bytes()), indent=2, sort_keys=True)
        except (ValueError, RecursionError):
            kind = "text"
    return {"kind": kind, "path": path, "text": text, "truncated": entry.size > len(text)}


def _header_from_chunks(v: Any, path: str) -> dict[str, Any] | None:
    """A chunked safetensors file's tensors (name -> dtype, shape), from its first chunk,
    when the shelf is a folder here (its chunks are mapped, checked, never copied); None
    otherwise, or when anything about it is off (then the whole file is read and checked)."""
    chunks = chunks_from_shelf(v, path)
    found = first_chunk_header(chunks) if chunks else None
    if found is None:
        return None
    header = found[0]
    header.pop("__metadata__", None)
    for info in header.values():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not (
            isinstance(info, dict)
            and isinstance(info.get("dtype"), str)
            and isinstance(shape, list)
            and all(type(d) is int and d >= 0 for d in shape)
        ):
            return None
    return header


# -- runs ---------------------------------------------------------------------------------
def run_row(run: Any) -> dict[str, Any]:
    ended = run.ended_at
    duration = (ended - run.started_at).total_seconds() if ended else None
    return {
        "id": run.id,
        "name": run.name or "",
        "job_type": run.job_type,
        "status": run.status,
        "started": run.started_at,
        "duration": duration,
        "duration_text": _duration(duration),
        "summary": {k: v for k, v in (run.summary or {}).items() if finite(v)},
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def runs(shelf: Shelf, job_type: str | None = None) -> dict[str, Any]:
    rows = [run_row(r) for r in reversed(shelf.runs(job_type=job_type or None))]
    return {
        "rows": rows,
        "metrics": sorted({m for r in rows for m in r["summary"]}),
        "job_types": sorted({r["job_type"] for r in rows}),
        "job_type": job_type or "",
    }


def run(shelf: Shelf, run_id: str) -> dict[str, Any]:
    r = shelf.get_run(run_id)
    history = r.history()
    metric_names = sorted(
        {k for row in history for k, v in row.items() if k not in ("step", "at") and finite(v)}
    )
    steps = [row.get("step", i) for i, row in enumerate(history)]
    curves = {
        m: {
            "x": [s for s, row in zip(steps, history, strict=True) if finite(row.get(m))],
            "y": [row[m] for row in history if finite(row.get(m))],
        }
        for m in metric_names
    }
    return {
        **run_row(r),
        "config": flatten(r.config),
        "environment": r.environment,
        "error": r.error,
        "curves": curves,
        "inputs": [v.ref for v in r.inputs()],
        "outputs": [v.ref for v in r.outputs()],
        "ended": r.ended_at,
    }


# -- compare ------------------------------------------------------------------------------
def compare(shelf: Shelf, refs: list[str]) -> dict[str, Any]:
    """Versions side by side (metadata, config, metrics with deltas to the first), and what
    changed from the first to each other: files, tensors and predictions tables row by row."""
    versions = [shelf.get(r) for r in refs]
    metrics = [metrics_of(v) for v in versions]
    configs = [flatten(config_of(v)) for v in versions]
    metas = [flatten({k: val for k, val in v.metadata.items() if k != "metrics"}) for v in versions]
    metric_rows = []
    for m in sorted({k for ms in metrics for k in ms}):
        base: Any = metrics[0].get(m)
        cells = []
        for values in metrics:
            value: Any = values.get(m)
            delta = float(value) - float(base) if finite(value) and finite(base) else None
            cells.append({"value": number(value), "delta": delta})
        metric_rows.append({"name": m, "cells": cells})
    diffs = []
    for v in versions[1:]:
        d = shelf.diff(versions[0].ref, v.ref)
        diffs.append(
            {
                "a": d.a,
                "b": d.b,
                "files": [f.__dict__ for f in d.files if f.status != "unchanged"],
                "unchanged": len(d.unchanged),
                "tensors": {
                    p: [t.__dict__ for t in ts if t.status != "unchanged"]
                    for p, ts in d.tensors.items()
                },
                "tensor_counts": {
                    p: dict(Counter(t.status for t in ts)) for p, ts in d.tensors.items()
                },
                "tables": {
                    p: {**t.__dict__, "rows": table_rows(shelf, d.a, d.b, p)}
                    for p, t in d.tables.items()
                },
                "skipped": d.skipped,
            }
        )
    return {
        "refs": [v.ref for v in versions],
        "versions": [
            {
                "ref": v.ref,
                "type": v.type,
                "aliases": v.aliases,
                "created": v.created_at,
                "size_text": human_size(v.size),
            }
            for v in versions
        ],
        "metrics": metric_rows,
        "config": _side_by_side(configs),
        "metadata": _side_by_side(metas),
        "diffs": diffs,
    }


def _side_by_side(dicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per key: the value in each version, and whether they differ."""
    rows = []
    for key in sorted({k for d in dicts for k in d}):
        values = [d.get(key) for d in dicts]
        shown = [json.dumps(v, sort_keys=True, default=str) for v in values]
        rows.append(
            {
                "key": key,
                "shown": ["" if v is None else _plain(v) for v in values],
                "differs": len(set(shown)) > 1,
            }
        )
    return rows


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return number(value)
    return json.dumps(value, sort_keys=True, default=str)


def table_rows(shelf: Shelf, a: str, b: str, path: str) -> dict[str, Any]:
    """Two versions' tables row by row: rows matched on a key column shared by both (``id``,
    ``key``, ...) or by position; each row says added, removed, changed (which cells) or
    unchanged. Differing rows come first; at most DIFF_ROWS rows."""
    cols_a, rows_a = read_table(shelf.get(a).path(path))
    cols_b, rows_b = read_table(shelf.get(b).path(path))
    key = next(
        (c for c in ("id", "key", "index", "row", "uid") if c in cols_a and c in cols_b), None
    )
    columns = cols_b + [c for c in cols_a if c not in cols_b]
    if key is not None:
        left = {str(r.get(key)): r for r in rows_a}
        right = {str(r.get(key)): r for r in rows_b}
        keys = list(left) + [k for k in right if k not in left]
    else:
        left = {str(i): r for i, r in enumerate(rows_a)}
        right = {str(i): r for i, r in enumerate(rows_b)}
        keys = [str(i) for i in range(max(len(rows_a), len(rows_b)))]
    out: list[dict[str, Any]] = []
    counts = {"added": 0, "removed": 0, "changed": 0, "unchanged": 0}
    for k in keys:
        ra, rb = left.get(k), right.get(k)
        if ra is None or rb is None:
            status = "added" if ra is None else "removed"
            cells: list[dict[str, str | None]] = [
                {"value": _cell((rb or ra or {}).get(c))} for c in columns
            ]
        else:
            cells = []
            for c in columns:
                va, vb = _cell(ra.get(c)), _cell(rb.get(c))
                cells.append({"value": vb, "old": va if va != vb else None})
            status = "changed" if any(c["old"] is not None for c in cells) else "unchanged"
        counts[status] += 1
        out.append({"key": k, "status": status, "cells": cells})
    out.sort(key=lambda r: r["status"] == "unchanged")
    return {"key": key, "columns": columns, "rows": out[:DIFF_ROWS], "counts": counts}


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


# -- lineage ------------------------------------------------------------------------------
def lineage(shelf: Shelf, ref: str, direction: str, depth: int | None) -> dict[str, Any]:
    return shelf.lineage(ref, direction=direction, depth=depth).to_dict()


def explode_artifact(shelf: Shelf, name: str) -> dict[str, Any]:
    """Every version of an artifact, with the run that logged each and the runs that used
    each: what "explode" adds to a lineage graph."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: set[tuple[str, str, str]] = set()
    for v in shelf.versions(name):
        nodes[v.ref] = version_node(v)
        made = v.logged_by()
        if made is not None:
            nodes.setdefault(f"run:{made.id}", run_node(made))
            edges.add((f"run:{made.id}", v.ref, "logged"))
        for r in v.used_by():
            nodes.setdefault(f"run:{r.id}", run_node(r))
            edges.add((v.ref, f"run:{r.id}", "used"))
    return _graph(nodes, edges)


def explode_job_type(shelf: Shelf, job_type: str) -> dict[str, Any]:
    """Every run of a job type, with what each used and logged."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: set[tuple[str, str, str]] = set()
    for r in shelf.runs(job_type=job_type):
        rid = f"run:{r.id}"
        nodes[rid] = run_node(r)
        for v in r.inputs():
            nodes.setdefault(v.ref, version_node(v))
            edges.add((v.ref, rid, "used"))
        for v in r.outputs():
            nodes.setdefault(v.ref, version_node(v))
            edges.add((rid, v.ref, "logged"))
    return _graph(nodes, edges)


def _graph(nodes: dict[str, dict[str, Any]], edges: set[tuple[str, str, str]]) -> dict[str, Any]:
    return {
        "nodes": list(nodes.values()),
        "edges": [{"from": a, "to": b, "kind": k} for a, b, k in sorted(edges)],
    }


# -- dashboard ----------------------------------------------------------------------------
class Memo:
    """Per-artifact results kept while the artifact's folder holds the same keys.

    Every change to an artifact (a version, a tag, a description or metadata change, an alias
    move, a deletion) writes a new record under its folder, and records are never rewritten
    (only the HEAD hints are, which change no result): the set of keys is a complete change
    token. Checking it is one listing, instead of reading every version again. A change made
    after the listing makes the next listing differ, so a result is never stale past one page.
    """

    def __init__(self) -> None:
        self._data: dict[str, tuple[frozenset[str], Any]] = {}
        self._lock = threading.Lock()

    def get(self, shelf: Shelf, name: str, compute: Callable[[str], R]) -> R:
        repo = shelf.repository
        token = frozenset(repo.storage.find(repo.labels.keys(name).prefix))
        with self._lock:
            hit = self._data.get(name)
        if hit is not None and hit[0] == token:
            return hit[1]  # type: ignore[no-any-return]
        value = compute(name)
        with self._lock:
            self._data[name] = (token, value)
        return value


def dashboard(
    shelf: Shelf, type_: str, metric: str | None, mode: str, top: int, memo: Memo | None = None
) -> dict[str, Any]:
    """The top ``top`` versions by ``metric`` across every artifact of ``type_``."""
    everything = [r for r in artifact_rows(shelf, aliases=False) if "unreadable" not in r]
    types = sorted({r["type"] for r in everything})
    names = [r["name"] for r in everything if r["type"] == type_]

    def scored(name: str) -> list[dict[str, Any]]:
        try:
            versions = shelf.versions(name)
        except (ModelshelfError, OSError):
            return []
        return [
            {"ref": v.ref, "name": v.name, "aliases": v.aliases, "created": v.created_at,
             "metrics": {k: x for k, x in metrics_of(v).items() if finite(x)}}
            for v in versions
        ]  # fmt: skip

    def remembered(name: str) -> list[dict[str, Any]]:
        return memo.get(shelf, name, scored) if memo is not None else scored(name)

    rows = [r for found in each(shelf, remembered, names) for r in found]
    metrics = sorted({m for r in rows for m in r["metrics"]})
    if metric is None and metrics:
        metric = metrics[0]
    ranked = [r for r in rows if metric in r["metrics"]]
    ranked.sort(key=lambda r: r["metrics"][metric], reverse=mode == "max")
    return {
        "types": types,
        "type": type_,
        "metric": metric or "",
        "metrics": metrics,
        "mode": mode,
        "top": top,
        "rows": ranked[:top],
        "others": [m for m in metrics if m != metric][:6],
    }
