"""A shelf written by an older modelshelf reads, verifies, resolves and extends unchanged.

``tests/data/shelf-v1`` was written once by ``tests/data/make_shelf_v1.py`` with the code as it
stood before the layered core (on-shelf format 1). The test works on a copy of it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import modelshelf as ms

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))

from make_shelf_v1 import (  # noqa: E402
    REFERENCE,
    REFERENCE_MTIME,
    REFERENCE_TEXT,
    TinyNet,
)


@pytest.fixture
def old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ms.Shelf:
    """A copy of the committed format-1 shelf, and the file its reference points to.

    The shelf was written on another machine, so its file:// reference is trusted explicitly.
    """
    shutil.copytree(DATA / "shelf-v1", tmp_path / "shelf")
    monkeypatch.setenv("MODELSHELF_TRUSTED_PATHS", str(REFERENCE.parent))
    REFERENCE.write_bytes(REFERENCE_TEXT)
    os.utime(REFERENCE, (REFERENCE_MTIME, REFERENCE_MTIME))
    return ms.Shelf(tmp_path / "shelf")


def test_reads_resolves_and_verifies(old: ms.Shelf) -> None:
    assert old.artifacts() == ["digits", "notes", "proj/tiny", "refs"]
    assert old.artifacts(type="dataset") == ["digits", "refs"]
    assert [v.version for v in old.versions("proj/tiny")] == [1, 2]  # v0 was deleted
    best = old.get("proj/tiny:best")
    assert best.ref == "proj/tiny:v2"
    assert best.aliases == ["best", "latest", "production"]
    assert [(e.alias, e.version, e.previous) for e in old.alias_history("proj/tiny", "best")] == [
        ("best", 1, None),
        ("best", 2, 1),
    ]
    with pytest.raises(ms.NotFoundError, match="was deleted"):
        old.get("proj/tiny:v0")
    digits = old.get("digits:train")
    assert digits.tags == ["small"] and digits.metadata == {"rows": 2}
    assert sorted(digits.files) == ["README.txt", "train.csv"]
    for name in old.artifacts():
        for version in old.versions(name):
            version.verify()
    assert old.get("refs").files["modelshelf-compat-reference.txt"].uri == REFERENCE.as_uri()
    folder = old.get("refs").download()
    assert (folder / "modelshelf-compat-reference.txt").read_bytes() == REFERENCE_TEXT
    assert (digits.download() / "train.csv").read_text() == "x,y\n1,2\n3,4\n"


def test_runs_lineage_and_models(old: ms.Shelf) -> None:
    prepare, train = old.runs()
    assert (prepare.job_type, prepare.status, train.status) == ("prepare", "finished", "finished")
    assert train.config == {"lr": 0.1}
    assert [row["loss"] for row in train.history()] == [1.0, 0.5, 1.0 / 3]
    assert [v.ref for v in train.inputs()] == ["digits:v0"]
    assert [v.ref for v in train.outputs()] == ["proj/tiny:v1", "proj/tiny:v2"]
    assert [r.id for r in old.get("digits:v0").used_by()] == [train.id]
    graph = old.lineage("proj/tiny:v2", direction="upstream")
    assert {"digits:v0", "proj/tiny:v2", f"run:{train.id}", f"run:{prepare.id}"} <= set(graph.nodes)
    # The generator ran as a script, so the recorded class is __main__'s: load into a model.
    assert old.get("proj/tiny:v2").metadata["model"]["recipe"]["class"] == "__main__:TinyNet"
    net = old.load_model("proj/tiny:production", model=TinyNet())
    assert net.layer.bias.tolist() == [2.0] * 4
    assert old.best("proj/tiny", "loss").ref == "proj/tiny:v2"


def test_new_code_extends_an_old_shelf(old: ms.Shelf, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello again\n")
    v = old.log_artifact(tmp_path / "notes.txt", name="notes", aliases=["reviewed"])
    assert (v.ref, v.type, v.aliases) == ("notes:v1", "text", ["latest", "reviewed"])
    net = TinyNet()
    model = old.log_model(net, "proj/tiny", init_args={"width": 4})
    assert model.version == 3  # numbers continue after the old ones, never reused
    old.get("proj/tiny:v1").set_alias("best")
    assert old.get("proj/tiny:best").version == 1
    old.delete("proj/tiny:v1", force=True)
    report = old.gc(grace_period=0)
    assert report.blobs >= 1  # v0's and v1's weights are no longer needed
    for name in old.artifacts():
        for version in old.versions(name):
            version.verify()
    copy = ms.Shelf(tmp_path / "copy")
    assert [c.ref for c in old.copy("digits", copy)] == ["digits:v0"]
    copy.get("digits").verify()
