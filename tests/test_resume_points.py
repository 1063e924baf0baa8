"""Resume points on every backend: written, replaced, read back checked, removed."""

from __future__ import annotations

from pathlib import Path

import modelshelf as ms
from modelshelf._core.sources import LocalFile, StreamedFile
from modelshelf._features.resume import drop_point, points, write_point


def test_points_are_replaced_read_back_and_dropped(shelf: ms.Shelf, tmp_path: Path) -> None:
    repo = shelf.repository
    state = tmp_path / "state.ckpt"
    for epoch in range(3):
        state.write_bytes(f"state {epoch}".encode() * 1000)
        write_point(
            repo, "team/net", "20261129-000000-aaaaaa", epoch=epoch, global_step=10 * epoch,
            version=None, state={"best": 1.0, "phase": 0}, model={"tied": {}},
            files={"state.ckpt": LocalFile(state),
                   "w.bin": StreamedFile(lambda e=epoch: [f"weights {e}".encode()])},
        )  # fmt: skip
    write_point(
        repo, "team/net", "20261129-000001-bbbbbb", epoch=0, global_step=1, version=4,
        state={}, model={}, files={},
    )  # fmt: skip
    first, second = points(repo, "team/net")
    assert (first.epoch, first.global_step, second.version) == (2, 20, 4)
    assert first.path("w.bin").read_bytes() == b"weights 2"
    assert first.path("state.ckpt").read_bytes() == b"state 2" * 1000
    stored = repo.storage.find("resume")
    assert len(stored) == 4  # two points, and only the last epoch's two files
    assert points(repo, "other") == []
    drop_point(repo, "team/net", first.run_id)
    drop_point(repo, "team/net", second.run_id)
    assert points(repo, "team/net") == [] and repo.storage.find("resume") == []
    assert shelf.artifacts() == []  # a point is not a version
