"""Callback benchmark: how long training is blocked per checkpoint, ShelfCheckpoint vs Lightning.

Run: ``python benchmarks/callbacks.py [--mib 100] [--epochs 8]``. Prints a table and writes
``benchmarks/results/callbacks.json``. In the same run, on the same disk, the same ~100 MB model
is trained twice: with Lightning's ``ModelCheckpoint(save_top_k=1)`` to a local folder (the
baseline) and with ``ShelfCheckpoint(background=True, keep_last=1)`` to a local shelf. Blocked
time is the time spent inside each callback's checkpoint hooks (plus, for ShelfCheckpoint, the
wait for pending writes at the end of fit). Target: <= 0.5x the baseline per checkpoint.

A third training measures resume points: ``mode="max"`` on a falling loss improves once, so
every later epoch saves no version but leaves a resume point (weights and training state
written under ``resume/``), which is what a monitored training that stops improving costs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modelshelf as ms
from common import folder_bytes, save_results
from modelshelf.integrations.lightning import ShelfCheckpoint

HERE = Path(__file__).resolve().parent


class Wide(L.LightningModule):
    def __init__(self, width: int = 2560, depth: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

    def training_step(self, batch: tuple[torch.Tensor], _i: int) -> torch.Tensor:
        loss = self.net(batch[0]).pow(2).mean()
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3, momentum=0.9)


def timed(cls: type) -> type:
    """A subclass whose checkpoint hooks add their duration to ``self.blocked``."""

    class Timed(cls):  # type: ignore[valid-type, misc]
        blocked: list[float]

        def _timed(self, hook: str, *args: Any) -> None:
            t = time.perf_counter()
            getattr(super(), hook)(*args)
            self.blocked.append(time.perf_counter() - t)

        def on_train_epoch_end(self, *args: Any) -> None:
            self._timed("on_train_epoch_end", *args)

        def on_validation_end(self, *args: Any) -> None:
            self._timed("on_validation_end", *args)

        def on_train_end(self, *args: Any) -> None:
            t = time.perf_counter()
            super().on_train_end(*args)
            self.end_wait = time.perf_counter() - t

    Timed.__name__ = cls.__name__
    return Timed


def train(callback: Any, width: int, epochs: int, batches: int) -> float:
    torch.manual_seed(0)
    # Enough batches that an epoch takes a few seconds, as real epochs do.
    data = DataLoader(TensorDataset(torch.randn(batches * 32, width)), batch_size=32)
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[callback], logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=isinstance(callback, ModelCheckpoint),
    )  # fmt: skip
    t = time.perf_counter()
    trainer.fit(Wide(width), data)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batches", type=int, default=24, help="batches per epoch")
    args = parser.parse_args()
    width = int((args.mib * 2**20 / 4 / 4) ** 0.5)
    with tempfile.TemporaryDirectory(dir=HERE) as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MODELSHELF_CACHE"] = str(tmp / "cache")
        baseline = timed(ModelCheckpoint)(
            dirpath=tmp / "lightning", monitor="train_loss", save_top_k=1
        )
        baseline.blocked = []
        baseline_fit = train(baseline, width, args.epochs, args.batches)
        baseline_bytes = folder_bytes(tmp / "lightning")

        shelf = ms.Shelf(tmp / "shelf")
        ours = timed(ShelfCheckpoint)("wide", shelf=shelf, monitor="train_loss", keep_last=1)
        ours.blocked = []
        ours_fit = train(ours, width, args.epochs, args.batches)
        versions = len(shelf.versions("wide"))
        before_gc = folder_bytes(tmp / "shelf")
        shelf.gc(grace_period=0)
        shelf_bytes = folder_bytes(tmp / "shelf")

        points_shelf = ms.Shelf(tmp / "points")
        points = timed(ShelfCheckpoint)(
            "wide", shelf=points_shelf, monitor="train_loss", mode="max", keep_last=1
        )
        points.blocked = []
        points_fit = train(points, width, args.epochs, args.batches)
        points_versions = len(points_shelf.versions("wide"))

    saves = max(len([b for b in baseline.blocked if b > 0.001]), 1)
    base_per = sum(baseline.blocked) / saves
    ours_per = (sum(ours.blocked) + ours.end_wait) / args.epochs
    points_per = (sum(points.blocked) + points.end_wait) / args.epochs
    results = {
        "model_mib": args.mib,
        "epochs": args.epochs,
        "model_checkpoint_blocked_s_per_checkpoint": base_per,
        "shelf_checkpoint_blocked_s_per_checkpoint": ours_per,
        "shelf_checkpoint_end_wait_s": ours.end_wait,
        "ratio": ours_per / base_per,
        "fit_s": {"model_checkpoint": baseline_fit, "shelf_checkpoint": ours_fit},
        "model_checkpoint_bytes": baseline_bytes,
        "shelf_bytes_before_gc": before_gc,
        "shelf_bytes_after_gc": shelf_bytes,
        "shelf_versions_kept": versions,
        "resume_points_blocked_s_per_epoch": points_per,
        "resume_points_fit_s": points_fit,
        "resume_points_versions": points_versions,
    }
    mib = 2**20
    rows = [
        ("ModelCheckpoint(save_top_k=1) (baseline)", base_per, baseline_bytes, baseline_fit),
        ("ShelfCheckpoint(background=True, keep_last=1)", ours_per, shelf_bytes, ours_fit),
    ]
    points_label = f"ShelfCheckpoint improving once ({points_versions} version, points)"
    print(
        f"~{args.mib} MiB model, {args.epochs} epochs of {args.batches} batches, a checkpoint each"
    )
    print(f"{'':<48}{'blocked/ckpt':>13}  {'on disk':>9}  {'whole fit':>9}")
    for label, blocked, size, fit_s in rows:
        print(f"{label:<48}{blocked:>11.3f} s  {size / mib:>5.0f} MiB  {fit_s:>7.1f} s")
    print(f"{points_label:<48}{points_per:>11.3f} s  {'':>9}  {points_fit:>7.1f} s")
    print(f"ratio {ours_per / base_per:.2f}x (target <= 0.5x), end-of-fit wait included")
    print(f"shelf before gc: {before_gc / mib:.0f} MiB; after: {versions} version(s) kept")
    print(f"wrote {save_results('callbacks', results)}")


if __name__ == "__main__":
    main()
