"""The README's demo runs, twice, and leaves what it says it leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelshelf as ms

REPO = Path(__file__).resolve().parents[1]


def test_core_demo_runs_twice_and_adds_versions(tmp_path: Path) -> None:
    env = {**os.environ, "MODELSHELF_ROOT": str(tmp_path / "shelf")}
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, str(REPO / "examples" / "core_demo.py")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        assert "verified every byte" in out
    shelf = ms.Shelf(tmp_path / "shelf")
    versions = shelf.versions("demo-model")
    assert [v.version for v in versions] == [0, 1, 2, 3]
    assert shelf.get("demo-model:best").version == 3
    assert versions[0].files["weights.bin"] == versions[1].files["weights.bin"]
    assert "demo" in shelf.get("demo-model:best").tags


@pytest.mark.slow
def test_make_demo_trains_versions_and_reloads_twice(tmp_path: Path) -> None:
    env = {**os.environ, "MODELSHELF_ROOT": str(tmp_path / "shelf")}
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, str(REPO / "examples" / "demo.py")],
            env=env, capture_output=True, text=True, timeout=300, check=True,
        ).stdout  # fmt: skip
        accuracy = float(out.rsplit("test accuracy", 1)[1])
        assert accuracy > 0.5  # chance is 0.1
        assert "tensors in model.safetensors" in out and "--logged--> digits-cnn:" in out
    shelf = ms.Shelf(tmp_path / "shelf")
    versions = shelf.versions("digits-cnn")
    assert len(versions) == 12  # six epochs, twice
    best = shelf.get("digits-cnn:best")
    assert best.metadata["monitored_value"] == min(
        v.metadata["monitored_value"] for v in versions[6:]
    )
    assert [v.version for v in shelf.versions("digits")] == [0]  # the same data, logged once
    assert "epoch" not in shelf.compare("digits-cnn")[0]["metrics"]  # bookkeeping, not a metric
