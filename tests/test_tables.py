"""Inside changed files: table rows, arrays, Keras variables; and two models' predictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import modelshelf as ms
from modelshelf._features import tables


def logged(shelf: ms.Shelf, tmp: Path, name: str, files: dict[str, str | bytes]) -> str:
    folder = tmp / f"{name}-{len(list(tmp.iterdir()))}"
    folder.mkdir()
    for path, content in files.items():
        target = folder / path
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return shelf.log_artifact(folder, name=name, type="predictions").ref


def npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_changed_csv_reports_rows_and_columns(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    a = logged(
        shelf, tmp_path, "preds", {"p.csv": "id,pred,score\n1,cat,0.9\n2,dog,0.8\n3,cat,0.7\n"}
    )
    b = logged(
        shelf, tmp_path, "preds", {"p.csv": "id,pred,score\n1,cat,0.9\n3,dog,0.6\n4,cat,0.5\n"}
    )
    d = shelf.diff(a, b)
    t = d.tables["p.csv"]
    assert (t.key, t.rows_a, t.rows_b) == ("id", 3, 3)
    assert (t.added, t.removed, t.changed) == (1, 1, 1)  # 4 added, 2 removed, 3 changed
    assert t.column_changes == {"pred": 1, "score": 1}
    assert t.examples == [{"row": "3", "column": "pred", "a": "cat", "b": "dog"}]
    text = str(d)
    assert "table p.csv (3 -> 3 rows, matched by 'id'): 1 added, 1 removed, 1 changed" in text
    assert json.loads(json.dumps(d.to_dict()))["tables"]["p.csv"]["changed"] == 1


def test_jsonl_without_a_key_is_matched_by_row_order(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    rows = [{"y": i % 3} for i in range(10)]
    a = logged(shelf, tmp_path, "p", {"p.jsonl": "\n".join(json.dumps(r) for r in rows)})
    rows[4]["y"] = 9
    rows.append({"y": 1, "extra": True})
    b = logged(shelf, tmp_path, "p", {"p.jsonl": "\n".join(json.dumps(r) for r in rows)})
    t = shelf.diff(a, b).tables["p.jsonl"]
    assert (t.key, t.added, t.removed, t.changed) == (None, 1, 0, 1)
    assert t.columns_added == ["extra"] and t.examples[0] == {
        "row": "4",
        "column": "y",
        "a": 1,
        "b": 9,
    }


def test_arrays_report_the_elements_and_rows_that_changed(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    a = logged(shelf, tmp_path, "arr", {"x.npy": npy(x)})
    y = x.copy()
    y[1, 2] += 0.5
    y[3, 0] = -1
    b = logged(shelf, tmp_path, "arr", {"x.npy": npy(y)})
    (change,) = shelf.diff(a, b).arrays["x.npy"]
    assert (change.status, change.changed, change.rows_changed) == ("changed", 2, 2)
    assert change.max_abs_diff == pytest.approx(10.0)
    other = logged(shelf, tmp_path, "arr", {"x.npy": npy(np.zeros((5, 3)))})
    (shape,) = shelf.diff(b, other).arrays["x.npy"]
    assert shape.status == "shape changed" and shape.shape_b == [5, 3]


def test_what_cannot_be_compared_inside_is_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    pickled = npy(np.array([{"a": 1}], dtype=object))  # an object array: a pickle inside
    a = logged(shelf, tmp_path, "x", {"x.npy": pickled, "t.csv": "a\n1\n"})
    b = logged(shelf, tmp_path, "x", {"x.npy": npy(np.zeros(2)), "t.csv": "a\n2\n"})
    d = shelf.diff(a, b)
    assert "allow_pickle" in d.skipped["x.npy"]  # never unpickled
    assert d.tables["t.csv"].changed == 1
    monkeypatch.setattr(tables, "MAX_TABLE_BYTES", 3)
    d = shelf.diff(a, b)
    assert "tables above 3 bytes are not compared" in d.skipped["t.csv"]
    assert "not compared inside t.csv" in str(d)


def test_compare_predictions_agreement_and_accuracy(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    a = logged(
        shelf, tmp_path, "pa", {"p.csv": "id,prediction,label\n1,0,0\n2,1,1\n3,2,1\n4,0,0\n"}
    )
    b = logged(
        shelf, tmp_path, "pb", {"p.csv": "id,prediction\n4,0\n3,1\n2,2\n1,0\n"}
    )  # other order
    c = shelf.compare_predictions(a, b)
    assert (c.n, c.agree, c.key) == (4, 2, "key") and c.agreement == 0.5
    assert (c.accuracy_a, c.accuracy_b) == (0.75, 0.75)  # the label column beside a's predictions
    assert {d["row"] for d in c.disagreements} == {"2", "3"}
    given = shelf.compare_predictions(a, b, labels=[0, 1, 1, 1])  # in a's row order
    assert (given.accuracy_a, given.accuracy_b) == (0.5, 0.5)
    truth = logged(shelf, tmp_path, "truth", {"y.csv": "id,label\n1,0\n2,2\n3,1\n4,0\n"})
    by_ref = shelf.compare_predictions(a, b, labels=truth)
    assert (by_ref.accuracy_a, by_ref.accuracy_b) == (0.5, 1.0)  # matched by id
    assert "2 of 4 agree (50.00%)" in str(c)


def test_compare_predictions_of_score_arrays_and_bad_inputs(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    a = logged(shelf, tmp_path, "sa", {"s.npy": npy(scores)})
    b = logged(shelf, tmp_path, "sb", {"s.npy": npy(scores[:, ::-1].copy())})
    c = shelf.compare_predictions(a, b, labels=np.array([0, 1, 1]))
    assert (c.agree, c.accuracy_a, c.accuracy_b) == (0, 2 / 3, 1 / 3)
    short = logged(shelf, tmp_path, "sc", {"s.npy": npy(scores[:2])})
    with pytest.raises(ms.InvalidArgumentError, match="no key column"):
        shelf.compare_predictions(a, short)
    with pytest.raises(ms.InvalidArgumentError, match="labels"):
        shelf.compare_predictions(a, b, labels=[0, 1])
    two = logged(shelf, tmp_path, "two", {"a.csv": "x\n1\n", "b.csv": "x\n1\n"})
    with pytest.raises(ms.InvalidArgumentError, match="exactly one"):
        shelf.compare_predictions(two, a)


KERAS = r"""
import sys
import numpy as np
import keras
import modelshelf as ms
shelf = ms.Shelf(sys.argv[1])
layers = [keras.layers.Dense(3, name="d1"), keras.layers.Dense(2, name="d2")]
model = keras.Sequential([keras.Input((4,)), *layers])
shelf.log_model(model, "k")
w = model.get_layer("d2").get_weights()
w[0][1, 1] += 0.25
model.get_layer("d2").set_weights(w)
shelf.log_model(model, "k")
model.save_weights(sys.argv[2] + "/a.weights.h5")
"""


@pytest.mark.slow
def test_keras_versions_diff_per_variable(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KERAS, str(tmp_path / "shelf"), str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = ms.Shelf(tmp_path / "shelf").diff("k:v0", "k:v1")
    changes = {t.name: t for t in d.tensors["model.keras"]}
    changed = [n for n, t in changes.items() if t.status == "changed"]
    assert changed == ["layers/dense_1/vars/0"]  # the second layer's kernel, as Keras names it
    assert changes[changed[0]].max_abs_diff == pytest.approx(0.25)
    assert sum(t.status == "unchanged" for t in changes.values()) == len(changes) - 1
    assert "~ layers/dense_1/vars/0: max|d|=0.25" in str(d)
