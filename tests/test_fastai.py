"""The fastai ShelfCheckpoint, with real fastai training on digits (CPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastai")
import torch
from fastai.callback.core import Callback
from fastai.metrics import Metric
from torch import nn

import modelshelf as ms
from fastai_train import learner
from modelshelf.integrations.fastai import ShelfCheckpoint
from zoo import digits

SCRIPT = Path(__file__).resolve().parent / "fastai_train.py"
SCORES = [3.0, 2.0, 2.5, 1.0, 1.5, 1.2]  # improves at epochs 0, 1 and 3


class Score(Metric):
    """A metric whose value per epoch is scripted, so improvements happen where we say."""

    def __init__(self, scores: list[float]) -> None:
        self.scores, self.epoch = scores, 0

    def reset(self) -> None:
        pass

    def accumulate(self, learn: object) -> None:
        self.epoch = learn.epoch  # type: ignore[attr-defined]

    @property
    def value(self) -> float:
        return self.scores[self.epoch]

    @property
    def name(self) -> str:
        return "score"


def fit(
    cb: ShelfCheckpoint,
    epochs: int,
    scores: list[float] = SCORES,
    extra: list[Callback] | None = None,
) -> None:
    learn = learner()
    learn.metrics = [Score(scores)]
    with learn.no_logging():
        learn.fit(epochs, 0.01, cbs=[cb, *(extra or [])])


def test_improved_versions_metadata_and_config(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    fit(ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", config={"note": "x"}), 6)
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [0, 1, 3]
    assert shelf.get("net:best") == shelf.get("net:latest") == versions[-1]
    meta = versions[-1].metadata
    assert set(meta["metrics"]) == {"train_loss", "valid_loss", "score"}
    assert meta["best_so_far"] == 1.0 and meta["global_step"] == 4 * 8
    assert (
        meta["model"]["format"] == "fastai"
        and meta["model"]["learner"]["loss_func"] == "CrossEntropyLoss"
    )
    run = versions[-1].logged_by()
    assert run is not None and run.status == "finished" and run.config["note"] == "x"
    history = run.history()  # every epoch's metrics, for ranking runs
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4, 5]
    assert [row["score"] for row in history] == SCORES[:6]
    assert run.summary["score"] == SCORES[5]
    assert run.config["n_items"] == {"train": 256, "valid": 128} and run.config["batch_size"] == 32
    assert run.config["n_epoch"] == 6 and run.config["learner"]["opt_func"] == "Adam"


def test_all_every_n_epochs_and_auto_mode(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    # 'score' has no 'loss' in its name: fastai's rule maximises it.
    fit(ShelfCheckpoint("net", shelf=shelf, monitor="score", save="all", every_n_epochs=2), 6)
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [1, 3, 5]
    assert shelf.get("net:best").metadata["epoch"] == 1  # 2.0 is the highest at epochs 1, 3, 5


def test_keep_last(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    scores = [5.0, 1.0, 4.0, 3.0, 6.0, 7.0]
    fit(
        ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", save="all", keep_last=2),
        6,
        scores,
    )
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [1, 4, 5]


def test_monitor_typo_lists_the_metrics(tmp_path: Path) -> None:
    cb = ShelfCheckpoint("net", shelf=ms.Shelf(tmp_path / "shelf"), monitor="valid_los")
    with pytest.raises(ms.NotFoundError, match=r"score, train_loss, valid_loss"):
        fit(cb, 1)


def test_best_reproduces_the_validation_loss(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint(
        "net", shelf=shelf, monitor="valid_loss", save="all", init_args={"d_in": 64, "hidden": 16}
    )
    learn = learner()
    with learn.no_logging():
        learn.fit(3, 0.01, cbs=cb)
    best = shelf.get("net:best")
    model = ms.load_model("net:best", shelf=shelf)
    x, y = digits(384)
    with torch.no_grad():
        # fastai averages batch losses weighted by batch size; the same on 32-row batches:
        losses = [
            nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32]).item() * 32
            for i in range(256, 384, 32)
        ]
    assert sum(losses) / 128 == pytest.approx(best.metadata["monitored_value"], rel=1e-5)


def test_writer_error_surfaces_from_fit(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", save="all")

    class BreakShelf(Callback):
        order = 100

        def after_epoch(self) -> None:
            if self.epoch == 1:
                cb.engine._writer.drain()
                shutil.rmtree(tmp_path / "shelf" / "blobs")
                (tmp_path / "shelf" / "blobs").write_text("not a folder any more")

    with pytest.raises(OSError):
        fit(cb, 4, extra=[BreakShelf()])
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["fit", "fit_one_cycle"])
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path, schedule: str) -> None:
    env = {**os.environ, "MODELSHELF_CACHE": str(tmp_path / "cache")}
    flags = ["--one-cycle"] if schedule == "fit_one_cycle" else []

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args, *flags],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    full = script(str(tmp_path / "full"), "--epochs", "5", "--out", str(tmp_path / "full.pt"))
    assert full.returncode == 0, full.stderr[-3000:]
    killed = script(str(tmp_path / "shelf"), "--epochs", "5", "--kill-after-version", "1")
    assert killed.returncode == -9, killed.stderr[-3000:]
    shelf = ms.Shelf(tmp_path / "shelf")
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1]
    resumed = script(
        str(tmp_path / "shelf"), "--epochs", "5", "--resume", "--out", str(tmp_path / "resumed.pt")
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1, 2, 3, 4]
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for key in a:  # same seed, no shuffling, Adam's state and the schedule's place: bit-exact
        assert torch.equal(a[key], b[key]), key


def test_stays_out_of_lr_find_and_get_preds(tmp_path: Path) -> None:
    from fastai.callback.schedule import Learner  # noqa: F401  (adds lr_find to Learner)

    shelf = ms.Shelf(tmp_path / "shelf")
    learn = learner()
    learn.add_cb(ShelfCheckpoint("net", shelf=shelf, monitor="valid_loss"))
    with learn.no_logging():
        learn.lr_find(num_it=5, show_plot=False)
        learn.get_preds()
        assert shelf.artifacts() == []
        learn.fit(1, 0.01)
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0]


def test_a_resumed_fit_that_dies_leaves_no_epoch_skipping_behind(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    learn = learner()

    def checkpoint() -> ShelfCheckpoint:
        return ShelfCheckpoint("net", shelf=shelf, monitor="valid_loss", save="all", resume=True)

    class Trained(Callback):
        order = 100

        def __init__(self, fail_at: int | None = None) -> None:
            self.epochs: list[int] = []
            self.fail_at = fail_at

        def after_train(self) -> None:
            self.epochs.append(self.epoch)
            if self.epoch == self.fail_at:
                raise RuntimeError("diverged")

    with learn.no_logging():
        learn.fit(2, 0.01, cbs=[checkpoint(), first := Trained()])
        with pytest.raises(RuntimeError, match="diverged"):
            learn.fit(4, 0.01, cbs=[checkpoint(), resumed := Trained(fail_at=2)])
        learn.fit(2, 0.01, cbs=[later := Trained()])  # no ShelfCheckpoint: nothing to skip
    assert (first.epochs, resumed.epochs, later.epochs) == ([0, 1], [2], [0, 1])
