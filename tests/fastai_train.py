"""A tiny deterministic fastai training on digits, run as a script by the callback tests.

python fastai_train.py SHELF --epochs N [--resume] [--kill-after-version K] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from torch import nn
from torch.utils.data import TensorDataset

import modelshelf as ms
from modelshelf.integrations.fastai import ShelfCheckpoint
from preempt import kill_when_logged
from zoo import MLP, digits


def learner(seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    x, y = digits(384)
    dls = DataLoaders.from_dsets(
        TensorDataset(x[:256], y[:256]), TensorDataset(x[256:], y[256:]),
        bs=32, shuffle=False, drop_last=False, device="cpu",
    )  # fmt: skip
    return Learner(dls, MLP(64, 16), loss_func=nn.CrossEntropyLoss())


class KillAfter(Callback):
    order = 100  # after ShelfCheckpoint

    def __init__(self, shelf: ms.Shelf, version: int) -> None:
        self.shelf, self.version = shelf, version

    def after_epoch(self) -> None:
        if self.epoch < self.version:
            return
        kill_when_logged(self.shelf, f"net:v{self.version}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shelf")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-after-version", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--one-cycle", action="store_true", help="fit_one_cycle instead of fit")
    args = parser.parse_args()
    shelf = ms.Shelf(args.shelf)
    cbs: list[Callback] = [
        ShelfCheckpoint(
            "net",
            shelf=shelf,
            monitor="valid_loss",
            save="all",
            resume=args.resume,
            init_args={"d_in": 64, "hidden": 16},
        )
    ]
    if args.kill_after_version is not None:
        cbs.append(KillAfter(shelf, args.kill_after_version))
    learn = learner()
    with learn.no_logging():
        if args.one_cycle:
            learn.fit_one_cycle(args.epochs, 0.01, cbs=cbs)
        else:
            learn.fit(args.epochs, 0.01, cbs=cbs)
    if args.out:
        torch.save({k: v.detach().clone() for k, v in learn.model.state_dict().items()}, args.out)


if __name__ == "__main__":
    main()
