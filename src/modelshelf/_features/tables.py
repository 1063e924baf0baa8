"""Tables and arrays inside versions: predictions, datasets, Keras weights.

``diff`` reports, for a changed table (CSV, JSONL, Parquet when pyarrow is installed) the rows
added, removed and changed (matched on a key column, else by row order), how many values
changed per column, and the first rows that differ; for ``.npy``/``.npz`` arrays, the elements
that changed; for Keras ``.keras``/``.weights.h5`` files, each variable, as for safetensors
tensors. ``compare_predictions`` measures how often two models' predictions agree and, given
labels, how often each is right.

Files come from a shelf: sizes are bounded before anything is read whole, an archive member is
read only if its declared size is within bounds, and nothing is unpickled (``.npy`` with
``allow_pickle=False``).
"""

from __future__ import annotations

import csv
import json
import math
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import InvalidArgumentError, UnsupportedModelError

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
ARRAY_SUFFIXES = (".npy", ".npz")
KERAS_SUFFIXES = (".keras", ".weights.h5")
MAX_TABLE_BYTES = 512 << 20  # a table larger than this is not diffed row by row
MAX_EXAMPLES = 5
KEY_COLUMNS = ("id", "key", "uid", "index", "row_id")
PREDICTION_COLUMNS = ("prediction", "pred", "predicted", "y_pred", "label", "class", "output")
LABEL_COLUMNS = ("label", "labels", "target", "y", "y_true", "class")


@dataclass
class TableDiff:
    """How a table changed between two versions."""

    key: str | None  # the column rows were matched on; None: row order
    rows_a: int
    rows_b: int
    added: int = 0
    removed: int = 0
    changed: int = 0
    columns_added: list[str] = field(default_factory=list)
    columns_removed: list[str] = field(default_factory=list)
    column_changes: dict[str, int] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)  # first differing rows

    def lines(self, path: str) -> list[str]:
        matched = f"by {self.key!r}" if self.key else "by row order"
        out = [
            f"table {path} ({self.rows_a} -> {self.rows_b} rows, matched {matched}): "
            f"{self.added} added, {self.removed} removed, {self.changed} changed"
        ]
        if self.columns_added or self.columns_removed:
            out.append(f"  columns: +{self.columns_added} -{self.columns_removed}")
        for column, n in sorted(self.column_changes.items()):
            out.append(f"  {column}: {n} changed")
        for e in self.examples:
            out.append(f"  row {e['row']!r}: {e['column']} {e['a']!r} -> {e['b']!r}")
        return out


@dataclass
class ArrayDiff:
    """How an array (of a ``.npy``, or one of a ``.npz``) changed."""

    name: str
    status: str  # unchanged | changed | shape changed | dtype changed | added | removed
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    changed: int = 0  # elements that differ
    rows_changed: int = 0  # entries along the first axis that differ
    max_abs_diff: float | None = None
    rel_l2: float | None = None  # |b - a| / |a|


@dataclass
class PredictionComparison:
    """Two models' predictions side by side."""

    a: str
    b: str
    n: int
    agree: int
    key: str | None
    accuracy_a: float | None = None
    accuracy_b: float | None = None
    disagreements: list[dict[str, Any]] = field(default_factory=list)  # the first few

    @property
    def agreement(self) -> float:
        return self.agree / self.n if self.n else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a, "b": self.b, "n": self.n, "agree": self.agree,
            "agreement": self.agreement, "key": self.key, "accuracy_a": self.accuracy_a,
            "accuracy_b": self.accuracy_b, "disagreements": self.disagreements,
        }  # fmt: skip

    def __str__(self) -> str:
        out = [f"{self.a} vs {self.b}: {self.agree} of {self.n} agree ({self.agreement:.2%})"]
        if self.accuracy_a is not None and self.accuracy_b is not None:
            out.append(f"accuracy: {self.accuracy_a:.4f} | {self.accuracy_b:.4f}")
        out += [f"  row {d['row']!r}: {d['a']!r} | {d['b']!r}" for d in self.disagreements]
        return "\n".join(out)


# -- reading -------------------------------------------------------------------------------
def _bounded(path: Path) -> None:
    size = path.stat().st_size
    if size > MAX_TABLE_BYTES:
        raise UnsupportedModelError(
            f"{path.name} is {size} bytes; tables above {MAX_TABLE_BYTES} bytes are not compared "
            "row by row."
        )


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The columns and rows of a CSV, JSONL or Parquet file."""
    _bounded(path)
    name = path.name.lower()
    if name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            rows = [dict(r) for r in reader]
            return list(reader.fieldnames or []), rows
    if name.endswith(".jsonl"):
        rows, columns = [], {}
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise InvalidArgumentError(f"{path.name}: a JSONL row is not an object.")
                    rows.append(row)
                    columns.update(dict.fromkeys(row))
        return list(columns), rows
    if name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UnsupportedModelError("Comparing Parquet tables needs pyarrow.") from None
        table = pq.read_table(path)
        return list(table.column_names), table.to_pylist()
    raise InvalidArgumentError(
        f"{path.name} is not a table modelshelf reads (CSV, JSONL, Parquet)."
    )


def read_arrays(path: Path) -> dict[str, Any]:
    """The arrays of a ``.npy`` (under its file name) or ``.npz`` file; no pickles."""
    import numpy as np

    _bounded(path)
    if path.name.lower().endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    return {path.name: np.load(path, allow_pickle=False)}


def keras_weights(path: Path) -> dict[str, Any]:
    """Every variable of a Keras ``.keras`` archive or ``.weights.h5`` file, by its path."""
    import h5py

    with tempfile.TemporaryDirectory(prefix="modelshelf-keras-") as tmp:
        h5 = path
        if path.name.endswith(".keras"):
            with zipfile.ZipFile(path) as archive:
                member = archive.getinfo("model.weights.h5")
                if member.file_size > 16 * MAX_TABLE_BYTES:
                    raise UnsupportedModelError(f"{path.name}: its weights are too large to diff.")
                h5 = Path(tmp) / "model.weights.h5"
                left = member.file_size  # never more than declared, whatever it inflates to
                with archive.open(member) as src, open(h5, "wb") as dst:
                    while left > 0:
                        chunk = src.read(min(left, 1 << 20))
                        if not chunk:
                            break
                        dst.write(chunk)
                        left -= len(chunk)
        out: dict[str, Any] = {}
        with h5py.File(h5, "r") as f:

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    out[name] = obj[()]

            f.visititems(visit)
        return out


# -- comparing -----------------------------------------------------------------------------
def _key_column(
    columns_a: list[str], rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]
) -> str | None:
    for column in KEY_COLUMNS:
        if all(column in r for r in rows_a) and all(column in r for r in rows_b):
            keys_a = [str(r[column]) for r in rows_a]
            keys_b = [str(r[column]) for r in rows_b]
            if len(set(keys_a)) == len(keys_a) and len(set(keys_b)) == len(keys_b):
                return column
    return None


def _keyed(rows: list[dict[str, Any]], key: str | None) -> dict[str, dict[str, Any]]:
    return {str(r[key]) if key else str(i): r for i, r in enumerate(rows)}


def diff_tables(path_a: Path, path_b: Path) -> TableDiff:
    columns_a, rows_a = read_table(path_a)
    columns_b, rows_b = read_table(path_b)
    key = _key_column(columns_a, rows_a, rows_b)
    a, b = _keyed(rows_a, key), _keyed(rows_b, key)
    result = TableDiff(key, len(rows_a), len(rows_b))
    result.columns_added = [c for c in columns_b if c not in columns_a]
    result.columns_removed = [c for c in columns_a if c not in columns_b]
    shared = [c for c in columns_a if c in columns_b and c != key]
    result.added = sum(1 for k in b if k not in a)
    result.removed = sum(1 for k in a if k not in b)
    for k, row in a.items():
        other = b.get(k)
        if other is None:
            continue
        differing = [c for c in shared if row.get(c) != other.get(c)]
        if differing:
            result.changed += 1
            for c in differing:
                result.column_changes[c] = result.column_changes.get(c, 0) + 1
            if len(result.examples) < MAX_EXAMPLES:
                c = differing[0]
                result.examples.append({"row": k, "column": c, "a": row.get(c), "b": other.get(c)})
    return result


def diff_arrays(a: dict[str, Any], b: dict[str, Any]) -> list[ArrayDiff]:
    import numpy as np

    out = []
    for name in sorted(set(a) | set(b)):
        xa, xb = a.get(name), b.get(name)
        d = ArrayDiff(
            name, "unchanged",
            shape_a=list(xa.shape) if xa is not None else None,
            shape_b=list(xb.shape) if xb is not None else None,
        )  # fmt: skip
        if xa is None or xb is None:
            d.status = "added" if xa is None else "removed"
        elif xa.shape != xb.shape:
            d.status = "shape changed"
        elif xa.dtype != xb.dtype and not (xa.dtype.kind in "fiub" and xb.dtype.kind in "fiub"):
            d.status = "dtype changed"
        else:
            ne = xa != xb
            if xa.dtype.kind == "f" and xb.dtype.kind == "f":
                ne &= ~(np.isnan(xa) & np.isnan(xb))
            d.changed = int(np.count_nonzero(ne))
            if d.changed:
                d.status = "changed"
                d.rows_changed = (
                    int(np.count_nonzero(ne.reshape(ne.shape[0], -1).any(axis=1))) if ne.ndim else 1
                )
                if xa.dtype.kind in "fiub" and xb.dtype.kind in "fiub":
                    fa, fb = xa.astype(np.float64), xb.astype(np.float64)
                    delta = np.abs(fb - fa)
                    d.max_abs_diff = float(np.nanmax(delta))
                    base = float(np.sqrt(np.nansum(fa * fa)))
                    size = float(np.sqrt(np.nansum(delta * delta)))
                    d.rel_l2 = size / base if base else math.inf
        out.append(d)
    return out


# -- predictions ----------------------------------------------------------------------------
@dataclass
class _Column:
    """One column of a version's single table (or its .npy array): keys when it has a key
    column, the values, and the table's rows (for a label column beside the predictions)."""

    keys: list[str] | None
    values: list[Any]
    name: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)


def _column(version: ArtifactVersion, wanted: tuple[str, ...]) -> _Column:
    files = [p for p in version.files if p.lower().endswith((*TABLE_SUFFIXES, ".npy"))]
    if len(files) != 1:
        raise InvalidArgumentError(
            f"{version.ref} holds {len(files)} table or .npy files; comparing predictions needs "
            "exactly one (CSV, JSONL, Parquet, .npy)."
        )
    path = version.path(files[0])
    if files[0].lower().endswith(".npy"):
        values = read_arrays(path)[path.name]
        if values.ndim == 2:
            values = values.argmax(axis=1)  # a score per class: the predicted class
        return _Column(None, values.tolist())
    columns, rows = read_table(path)
    if not columns:
        raise InvalidArgumentError(f"{version.ref}: its table has no columns.")
    name = next((c for c in wanted if c in columns), columns[-1])
    key = next((c for c in KEY_COLUMNS if c in columns), None)
    keys = [str(r.get(key)) for r in rows] if key else None
    return _Column(keys, [r.get(name) for r in rows], name, rows)


def _same(x: Any, y: Any) -> bool:
    if x == y:
        return True
    try:
        return float(x) == float(y)
    except (TypeError, ValueError):
        return str(x) == str(y)


def _truth(repo: Repository, labels: Any, predictions: _Column) -> _Column | None:
    """The labels: a column beside the predictions (labels=None), a version's table or array
    (a ref), or a sequence in the predictions' order."""
    if labels is None:
        others = [c for c in LABEL_COLUMNS if predictions.rows and c in predictions.rows[0]]
        name = next((c for c in others if c != predictions.name), None)
        if name is None:
            return None
        return _Column(predictions.keys, [r.get(name) for r in predictions.rows], name)
    if isinstance(labels, str):
        return _column(repo.get(labels), LABEL_COLUMNS)
    if isinstance(labels, (str, bytes)) or not (
        isinstance(labels, Sequence) or hasattr(labels, "tolist")
    ):
        raise InvalidArgumentError(
            f"labels must be a ref, a sequence or None, not {type(labels).__name__}."
        )
    values = labels.tolist() if hasattr(labels, "tolist") else list(labels)
    return _Column(None, list(values))


def compare_predictions(
    repo: Repository, a: str, b: str, labels: Any = None
) -> PredictionComparison:
    """How often the predictions of ``a`` and ``b`` agree (matched on a key column when both
    have one, else by row order) and, with labels, how often each is right."""
    va, vb = repo.get(a), repo.get(b)
    pa, pb = _column(va, PREDICTION_COLUMNS), _column(vb, PREDICTION_COLUMNS)
    if pa.keys is not None and pb.keys is not None:
        index_b = {k: i for i, k in enumerate(pb.keys)}
        rows = [(k, i, index_b[k]) for i, k in enumerate(pa.keys) if k in index_b]
        key: str | None = "key"
    else:
        if len(pa.values) != len(pb.values):
            raise InvalidArgumentError(
                f"{va.ref} has {len(pa.values)} predictions and {vb.ref} {len(pb.values)}, and "
                f"no key column ({', '.join(KEY_COLUMNS)}) to match them on."
            )
        rows = [(str(i), i, i) for i in range(len(pa.values))]
        key = None
    result = PredictionComparison(va.ref, vb.ref, len(rows), 0, key)
    for row, i, j in rows:
        x, y = pa.values[i], pb.values[j]
        if _same(x, y):
            result.agree += 1
        elif len(result.disagreements) < MAX_EXAMPLES:
            result.disagreements.append({"row": row, "a": x, "b": y})
    truth = _truth(repo, labels, pa)
    if truth is not None and rows:
        if truth.keys is not None and pa.keys is not None:
            by_key = dict(zip(truth.keys, truth.values, strict=True))
            expected = [by_key.get(row) for row, _, _ in rows]
        elif len(truth.values) == len(pa.values):
            expected = [truth.values[i] for _, i, _ in rows]
        else:
            raise InvalidArgumentError(
                f"{len(truth.values)} labels for {len(pa.values)} predictions of {va.ref}."
            )
        hits_a = sum(_same(pa.values[i], t) for (_, i, _), t in zip(rows, expected, strict=True))
        hits_b = sum(_same(pb.values[j], t) for (_, _, j), t in zip(rows, expected, strict=True))
        result.accuracy_a, result.accuracy_b = hits_a / len(rows), hits_b / len(rows)
    return result
