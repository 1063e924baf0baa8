"""Compare versions: files, metadata, config, metrics, and inside changed files: each tensor
(safetensors, Keras), table rows (CSV, JSONL, Parquet) and array elements (.npy, .npz)."""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import IntegrityError, InvalidArgumentError, ModelshelfError, NotFoundError
from .._progress import human_size
from . import tables
from .tables import ArrayDiff, TableDiff

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion

_TENSOR_SUFFIXES = (".safetensors",)
_ELEMENTS_PER_STEP = 1 << 20  # tensors are compared a million elements at a time
_DTYPES = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1),
    "U64": ("<u8", 8), "U32": ("<u4", 4), "U16": ("<u2", 2), "U8": ("u1", 1), "BOOL": ("?", 1),
}  # fmt: skip


@dataclass
class FileChange:
    path: str
    status: str  # added | removed | changed | unchanged
    size_a: int | None
    size_b: int | None


@dataclass
class TensorChange:
    name: str
    status: str  # unchanged | changed | shape changed | dtype changed | added | removed
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    max_abs_diff: float | None = None
    rel_l2: float | None = None


@dataclass
class Diff:
    """What differs between two versions; ``str(diff)`` is a readable report."""

    a: str
    b: str
    files: list[FileChange] = field(default_factory=list)
    metadata: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    config: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    metrics: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    tensors: dict[str, list[TensorChange]] = field(default_factory=dict)
    tables: dict[str, TableDiff] = field(default_factory=dict)
    arrays: dict[str, list[ArrayDiff]] = field(default_factory=dict)
    #: files that could not be compared inside (too large, unreadable): why
    skipped: dict[str, str] = field(default_factory=dict)

    def by_status(self, status: str) -> list[FileChange]:
        return [f for f in self.files if f.status == status]

    @property
    def added(self) -> list[str]:
        return [f.path for f in self.by_status("added")]

    @property
    def removed(self) -> list[str]:
        return [f.path for f in self.by_status("removed")]

    @property
    def changed(self) -> list[str]:
        return [f.path for f in self.by_status("changed")]

    @property
    def unchanged(self) -> list[str]:
        return [f.path for f in self.by_status("unchanged")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "files": [f.__dict__ for f in self.files],
            "metadata": {k: list(v) for k, v in self.metadata.items()},
            "config": {k: list(v) for k, v in self.config.items()},
            "metrics": {k: list(v) for k, v in self.metrics.items()},
            "tensors": {p: [t.__dict__ for t in ts] for p, ts in self.tensors.items()},
            "tables": {p: t.__dict__ for p, t in self.tables.items()},
            "arrays": {p: [a.__dict__ for a in arrs] for p, arrs in self.arrays.items()},
            "skipped": dict(self.skipped),
        }

    def __str__(self) -> str:
        out = [f"diff {self.a} -> {self.b}"]
        counts = {s: len(self.by_status(s)) for s in ("added", "removed", "changed", "unchanged")}
        out.append("files: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
        marks = {"added": "+", "removed": "-", "changed": "~"}
        for f in self.files:
            if f.status in marks:
                sizes = f"{human_size(f.size_a)} -> {human_size(f.size_b)}"
                out.append(f"  {marks[f.status]} {f.path}  {sizes}")
        for title, section in (("metadata", self.metadata), ("config", self.config)):
            if section:
                out.append(f"{title}:")
                out += [f"  {k}: {old!r} -> {new!r}" for k, (old, new) in sorted(section.items())]
        if self.metrics:
            out.append(f"metrics ({self.a} | {self.b}):")
            for k, (old, new) in sorted(self.metrics.items()):
                delta = f"  ({new - old:+.4g})" if _num(old) and _num(new) else ""
                out.append(f"  {k}: {_fmt(old)} | {_fmt(new)}{delta}")
        for path, changes in self.tensors.items():
            summary: dict[str, int] = {}
            for t in changes:
                summary[t.status] = summary.get(t.status, 0) + 1
            out.append(f"tensors in {path}: " + ", ".join(f"{n} {s}" for s, n in summary.items()))
            for t in changes:
                if t.status == "changed":
                    out.append(f"  ~ {t.name}: max|d|={t.max_abs_diff:.4g}, rel L2={t.rel_l2:.4g}")
                elif t.status in ("shape changed", "dtype changed"):
                    out.append(f"  ! {t.name}: {t.dtype_a}{t.shape_a} -> {t.dtype_b}{t.shape_b}")
                elif t.status in ("added", "removed"):
                    sign = "+" if t.status == "added" else "-"
                    shape = t.shape_b if t.status == "added" else t.shape_a
                    out.append(f"  {sign} {t.name}: {shape}")
        for path, table in self.tables.items():
            out += table.lines(path)
        for path, arrays in self.arrays.items():
            for d in arrays:
                if d.status == "changed":
                    worst = f", max|d|={d.max_abs_diff:.4g}" if d.max_abs_diff is not None else ""
                    out.append(
                        f"array {path}:{d.name}: {d.changed} element(s) changed in "
                        f"{d.rows_changed} row(s){worst}"
                    )
                elif d.status != "unchanged":
                    out.append(f"array {path}:{d.name}: {d.status} ({d.shape_a} -> {d.shape_b})")
        for path, why in self.skipped.items():
            out.append(f"not compared inside {path}: {why}")
        return "\n".join(out)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if _num(v) else ("-" if v is None else repr(v))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def metrics_of(version: ArtifactVersion) -> dict[str, Any]:
    """The version's own metrics, fixed when it was committed: its metadata's ``metrics``
    (a run that logs a version without them records its latest values there), else the
    numbers of its metadata. Never the logging run's final summary, which may belong to a
    later version of the same run."""
    out: dict[str, Any] = {}
    # A "metrics" dict, when there is one (checkpoints have it), holds the metrics, and the
    # other numbers (epoch, step, ...) are bookkeeping; without one, every number counts.
    # "model" (what log_model records) and "config" are descriptions, never metrics.
    metrics = version.metadata.get("metrics")
    if isinstance(metrics, dict):
        meta: dict[str, Any] = metrics
    else:
        meta = {k: v for k, v in version.metadata.items() if k not in ("model", "config")}
    out.update({k: v for k, v in flatten(meta).items() if _num(v)})
    return out


def _described(version: ArtifactVersion) -> dict[str, Any]:
    """The metadata but its metrics (a diff shows those on their own)."""
    return {k: v for k, v in version.metadata.items() if k != "metrics"}


def config_of(version: ArtifactVersion) -> dict[str, Any]:
    """The logging run's config, overlaid with the ``config=`` given to log_model."""
    run = version.logged_by()
    config = dict(run.config) if run is not None else {}
    extra = version.metadata.get("config")
    return {**config, **extra} if isinstance(extra, dict) else config


# -- safetensors, read lazily ---------------------------------------------------------------
def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The tensors of a safetensors file (name -> dtype, shape, offsets) and the data start.

    The header comes from a shelf, so it is checked against the file before any tensor is
    read: every tensor lies inside the data, and its byte length fits its shape and dtype (as
    safetensors itself checks), so a header cannot make a diff read or loop past the file.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise IntegrityError(f"{str(path)!r} is not a safetensors file (too short).")
        (n,) = struct.unpack("<Q", head)
        if n > min(100 * 1024 * 1024, size - 8):
            raise IntegrityError(f"{str(path)!r} is not a safetensors file (header of {n} bytes).")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):
            raise IntegrityError(f"{str(path)!r} is not a safetensors file (bad header).") from None
    if not isinstance(header, dict):
        raise IntegrityError(f"{str(path)!r} is not a safetensors file (bad header).")
    header.pop("__metadata__", None)
    for name, info in header.items():
        _check_tensor(path, name, info, size - 8 - n)
    return header, 8 + n


def _check_tensor(path: Path, name: str, info: Any, data_size: int) -> None:
    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"{str(path)!r}: the tensor {name!r:.80} {why}.")

    if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
        raise bad("has no dtype")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise bad(f"has a malformed shape {shape!r:.80}")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise bad(f"has offsets {offsets!r:.80} outside the file's {data_size} bytes of data")
    if info["dtype"] in _DTYPES:
        expected = math.prod(shape) * _DTYPES[info["dtype"]][1]
        if offsets[1] - offsets[0] != expected:
            raise bad(
                f"declares {info['dtype']}{shape} ({expected} bytes) over "
                f"{offsets[1] - offsets[0]} bytes"
            )


def _stream(path: Path, start: int, info: dict[str, Any], count: int) -> Any:
    import numpy as np

    code, width = _DTYPES[info["dtype"]]
    begin = start + int(info["data_offsets"][0])
    with open(path, "rb") as f:
        done = 0
        while done < count:
            n = min(_ELEMENTS_PER_STEP, count - done)
            f.seek(begin + done * width)
            raw = np.frombuffer(f.read(n * width), dtype=code)
            if info["dtype"] == "BF16":
                raw = (raw.astype(np.uint32) << 16).view(np.float32)
            yield raw.astype(np.float64)
            done += n


def compare_tensors(path_a: Path, path_b: Path) -> list[TensorChange]:
    """Per-tensor comparison, a million elements at a time (memory stays flat)."""
    ha, start_a = read_header(path_a)
    hb, start_b = read_header(path_b)
    out = []
    for name in sorted(set(ha) | set(hb)):
        ta, tb = ha.get(name), hb.get(name)
        change = TensorChange(
            name, "unchanged",
            shape_a=ta["shape"] if ta else None, shape_b=tb["shape"] if tb else None,
            dtype_a=ta["dtype"] if ta else None, dtype_b=tb["dtype"] if tb else None,
        )  # fmt: skip
        if ta is None or tb is None:
            change.status = "added" if ta is None else "removed"
        elif ta["shape"] != tb["shape"]:
            change.status = "shape changed"
        elif ta["dtype"] != tb["dtype"] or ta["dtype"] not in _DTYPES:
            change.status = "dtype changed" if ta["dtype"] != tb["dtype"] else "unchanged"
        else:
            count = math.prod(ta["shape"])
            max_abs, diff_sq, base_sq = 0.0, 0.0, 0.0
            for xa, xb in zip(
                _stream(path_a, start_a, ta, count),
                _stream(path_b, start_b, tb, count),
                strict=True,
            ):
                d = xb - xa
                if d.size:
                    max_abs = max(max_abs, float(abs(d).max()))
                diff_sq += float((d * d).sum())
                base_sq += float((xa * xa).sum())
            if max_abs > 0 or diff_sq != 0:
                change.status = "changed"
                change.max_abs_diff = max_abs
                change.rel_l2 = math.sqrt(diff_sq) / math.sqrt(base_sq) if base_sq else math.inf
        out.append(change)
    return out


def _inside(result: Diff, path: str, va: ArtifactVersion, vb: ArtifactVersion) -> None:
    """Compare what a changed file holds: tensors, Keras variables, table rows, arrays."""
    lower = path.lower()
    try:
        if lower.endswith(_TENSOR_SUFFIXES):
            result.tensors[path] = compare_tensors(va.path(path), vb.path(path))
        elif lower.endswith(tables.KERAS_SUFFIXES):
            a, b = tables.keras_weights(va.path(path)), tables.keras_weights(vb.path(path))
            result.tensors[path] = [_as_tensor(d) for d in tables.diff_arrays(a, b)]
        elif lower.endswith(tables.TABLE_SUFFIXES):
            result.tables[path] = tables.diff_tables(va.path(path), vb.path(path))
        elif lower.endswith(tables.ARRAY_SUFFIXES):
            a, b = tables.read_arrays(va.path(path)), tables.read_arrays(vb.path(path))
            result.arrays[path] = tables.diff_arrays(a, b)
    except IntegrityError:
        raise
    except (ModelshelfError, ImportError, OSError, ValueError, KeyError) as exc:
        result.skipped[path] = f"{type(exc).__name__}: {str(exc)[:200]}"


def _as_tensor(d: ArrayDiff) -> TensorChange:
    """A Keras variable's change, reported as a tensor's (per variable, like safetensors)."""
    return TensorChange(
        d.name, d.status, shape_a=d.shape_a, shape_b=d.shape_b,
        max_abs_diff=d.max_abs_diff, rel_l2=d.rel_l2,
    )  # fmt: skip


def diff(repo: Repository, a: str, b: str) -> Diff:
    va, vb = repo.get(a), repo.get(b)
    result = Diff(va.ref, vb.ref)
    fa, fb = va.files, vb.files
    for path in sorted(set(fa) | set(fb)):
        x, y = fa.get(path), fb.get(path)
        if x is None:
            status = "added"
        elif y is None:
            status = "removed"
        else:
            status = (
                "unchanged" if (x.digest, x.uri, x.size) == (y.digest, y.uri, y.size) else "changed"
            )
        result.files.append(FileChange(path, status, x.size if x else None, y.size if y else None))
        if status == "changed":
            _inside(result, path, va, vb)
    result.metadata = _changes(_described(va), _described(vb))
    result.config = _changes(config_of(va), config_of(vb))
    ma, mb = metrics_of(va), metrics_of(vb)
    result.metrics = {k: (ma.get(k), mb.get(k)) for k in sorted(set(ma) | set(mb))}
    return result


def compare(
    repo: Repository, refs_or_name: str | list[str], metrics: list[str] | None
) -> list[dict[str, Any]]:
    """One row per version: ref, aliases, created, metrics, and the config keys that vary."""
    if isinstance(refs_or_name, str) and ":" not in refs_or_name:
        versions = repo.versions(refs_or_name)
    else:
        refs = [refs_or_name] if isinstance(refs_or_name, str) else list(refs_or_name)
        versions = [repo.get(r) for r in refs]
    configs = [flatten(config_of(v)) for v in versions]
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]
    rows = []
    for v, cfg in zip(versions, configs, strict=True):
        values = metrics_of(v)
        if metrics is not None:
            values = {m: values.get(m) for m in metrics}
        rows.append(
            {
                "ref": v.ref,
                "aliases": v.aliases,
                "created_at": v.created_at.isoformat(),
                "metrics": values,
                "config": {k: cfg.get(k) for k in varying},
            }
        )
    return rows


def best(repo: Repository, name: str, metric: str, mode: str) -> ArtifactVersion:
    if mode not in ("min", "max"):
        raise InvalidArgumentError(f"Invalid mode {mode!r}: use 'min' or 'max'.", value=mode)
    scored = []
    seen: set[str] = set()
    for v in repo.versions(name):
        values = metrics_of(v)
        seen |= set(values)
        value = values.get(metric)
        if isinstance(value, (int, float)) and _num(value) and not math.isnan(value):
            scored.append((value, v.version, v))
    if not scored:
        raise NotFoundError(
            f"No version of {name!r} records the metric {metric!r}. Metrics recorded: "
            f"{', '.join(sorted(seen)) or 'none'}.",
            ref=name,
        )
    pick = min if mode == "min" else max
    # Ties go to the newest version.
    return pick(scored, key=lambda t: (t[0], -t[1] if mode == "min" else t[1]))[2]
