"""diff, compare and best: files, metadata, config, metrics, and per-tensor changes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import modelshelf as ms
from conftest import run_python


def _checkpoint(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    save_file(tensors, str(path))
    return path


def test_diff_reports_files_metadata_config_metrics_and_tensors(
    shelf: ms.Shelf, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    emb = rng.standard_normal((10, 3)).astype(np.float32)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    _checkpoint(folder / "model.safetensors", {"w": w, "b": b, "emb": emb, "old": b[:2].copy()})
    (folder / "notes.txt").write_text("same")
    (folder / "gone.txt").write_text("removed later")
    with shelf.run(config={"lr": 0.1, "opt": {"name": "sgd"}}) as run:
        run.log({"val_loss": 0.9})
        shelf.log_artifact(folder, name="net", type="model", metadata={"epoch": 1}, run=run)

    w2 = w.copy()
    w2[1, 2] += 0.5
    _checkpoint(
        folder / "model.safetensors",
        {"w": w2, "b": b, "emb": rng.standard_normal((12, 3)).astype(np.float32),
         "new": np.arange(3, dtype=np.int64)},
    )  # fmt: skip
    (folder / "gone.txt").unlink()
    (folder / "added.txt").write_text("new file")
    with shelf.run(config={"lr": 0.01, "opt": {"name": "sgd"}}) as run:
        run.log({"val_loss": 0.4})
        shelf.log_artifact(folder, name="net", type="model", metadata={"epoch": 2}, run=run)

    d = shelf.diff("net:v0", "net")
    assert (d.a, d.b) == ("net:v0", "net:v1")
    assert d.added == ["added.txt"] and d.removed == ["gone.txt"]
    assert d.changed == ["model.safetensors"] and d.unchanged == ["notes.txt"]
    assert d.metadata == {"epoch": (1, 2)}
    assert d.config == {"lr": (0.1, 0.01)}
    assert d.metrics["val_loss"] == (0.9, 0.4)

    tensors = {t.name: t for t in d.tensors["model.safetensors"]}
    assert tensors["b"].status == "unchanged"
    assert tensors["w"].status == "changed"
    assert tensors["w"].max_abs_diff == pytest.approx(0.5, rel=1e-6)
    expected_rel = 0.5 / math.sqrt(float((w.astype(np.float64) ** 2).sum()))
    assert tensors["w"].rel_l2 == pytest.approx(expected_rel, rel=1e-5)
    assert tensors["emb"].status == "shape changed"
    assert (tensors["emb"].shape_a, tensors["emb"].shape_b) == ([10, 3], [12, 3])
    assert tensors["new"].status == "added" and tensors["old"].status == "removed"

    report = str(d)
    expected_lines = [
        "+ added.txt",
        "- gone.txt",
        "~ model.safetensors",
        "lr: 0.1 -> 0.01",
        "val_loss: 0.9 | 0.4",
        "~ w: max|d|=0.5",
        "! emb: F32[10, 3] -> F32[12, 3]",
    ]
    for line in expected_lines:
        assert line in report, (line, report)
    assert d.to_dict()["tensors"]["model.safetensors"][0]["name"] == "b"


def test_compare_and_best(shelf: ms.Shelf, tmp_path: Path) -> None:
    f = tmp_path / "m.bin"
    for i, (loss, lr) in enumerate([(0.5, 0.1), (0.2, 0.01), (0.3, 0.001)]):
        f.write_bytes(bytes([i]))
        with shelf.run(config={"lr": lr, "batch": 32}) as run:
            run.log({"val_loss": loss})
            run.log_artifact(f, name="m", type="model", metadata={"val_acc": 1 - loss})
    rows = shelf.compare("m")
    assert [r["ref"] for r in rows] == ["m:v0", "m:v1", "m:v2"]
    assert [r["metrics"]["val_loss"] for r in rows] == [0.5, 0.2, 0.3]
    assert [r["config"] for r in rows] == [
        {"lr": 0.1},
        {"lr": 0.01},
        {"lr": 0.001},
    ]  # only what varies
    assert shelf.compare(["m:v2", "m:v0"], metrics=["val_acc"])[0]["metrics"] == {"val_acc": 0.7}
    assert shelf.best("m", "val_loss").version == 1
    assert shelf.best("m", "val_acc", mode="max").version == 1
    with pytest.raises(ms.NotFoundError, match=r"val_los'.*val_acc, val_loss"):
        shelf.best("m", "val_los")
    with pytest.raises(ms.InvalidArgumentError, match="'min' or 'max'"):
        shelf.best("m", "val_loss", mode="lowest")


DIFF_MEMORY = r"""
import resource, sys
import modelshelf as ms
shelf = ms.Shelf(sys.argv[1])
shelf.get("big:v0").download(); shelf.get("big:v1").download()   # fetching is not the point
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
d = shelf.diff("big:v0", "big:v1")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
(t,) = d.tensors["w.safetensors"]
print(before, after, t.status, t.max_abs_diff)
"""


@pytest.mark.slow
def test_tensor_diff_reads_lazily(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    w = np.zeros(64 * 1024 * 1024, dtype=np.float32)  # 256 MiB
    for i, value in enumerate([0.0, 2.0]):
        w[-1] = value
        folder = tmp_path / f"v{i}"
        folder.mkdir()
        _checkpoint(folder / "w.safetensors", {"w": w})
        shelf.log_artifact(folder, name="big", type="model")
    del w
    out = run_python(DIFF_MEMORY, str(tmp_path / "shelf")).stdout.split()
    before, after = int(out[0]), int(out[1])
    assert out[2] == "changed" and float(out[3]) == 2.0
    assert (after - before) < 100 * 1024, f"diff raised peak RSS by {(after - before) // 1024} MiB"
