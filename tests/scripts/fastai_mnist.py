"""fastai's MNIST example (DataBlock + vision_learner + fit_one_cycle) on digits, with the one
line a user adds: ``cbs=ShelfCheckpoint(...)``.

python fastai_mnist.py SHELF DATA --epochs N [--resume] [--kill-after-epoch K] [--fine-tune]
Prints one JSON line per epoch: {"epoch": e, "valid_loss": ..., "accuracy": ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from digits_images import digits_folder
from fastai.vision.all import (
    Callback,
    CategoryBlock,
    DataBlock,
    GrandparentSplitter,
    ImageBlock,
    PILImageBW,
    accuracy,
    get_image_files,
    parent_label,
    resnet18,
    set_seed,
    vision_learner,
)

from modelshelf.integrations.fastai import ShelfCheckpoint


class Report(Callback):
    order = 90  # after the Recorder

    def __init__(self, kill_after: int | None) -> None:
        self.kill_after, self.trained, self.fits = kill_after, False, -1

    def before_fit(self) -> None:
        self.fits += 1

    def after_train(self) -> None:
        self.trained = True  # not called for an epoch a resumed fit skips

    def after_epoch(self) -> None:
        trained, self.trained = self.trained, False
        if not trained:
            return
        names = self.recorder.metric_names[1:-1]
        values = dict(zip(names, self.recorder.values[-1], strict=False))
        row = {"epoch": self.epoch, "fit": self.fits, **{k: float(v) for k, v in values.items()}}
        print(json.dumps(row))
        sys.stdout.flush()
        if self.kill_after is not None and self.epoch >= self.kill_after:
            for cb in self.learn.cbs:  # wait for the pending write, as a preemption would not
                if isinstance(cb, ShelfCheckpoint):
                    cb.engine._writer.drain()
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shelf")
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-after-epoch", type=int, default=None)
    parser.add_argument("--fine-tune", action="store_true")
    args = parser.parse_args()
    set_seed(args.seed, reproducible=True)

    path = digits_folder(Path(args.data))
    dblock = DataBlock(
        blocks=(ImageBlock(cls=PILImageBW), CategoryBlock),
        get_items=get_image_files,
        splitter=GrandparentSplitter(train_name="train", valid_name="valid"),
        get_y=parent_label,
    )
    dls = dblock.dataloaders(path, bs=32, num_workers=0)
    learn = vision_learner(dls, resnet18, pretrained=False, n_in=1, metrics=accuracy)
    cbs = [
        ShelfCheckpoint("digits-resnet", shelf=args.shelf, resume=args.resume),
        Report(args.kill_after_epoch),
    ]
    with learn.no_bar():
        if args.fine_tune:
            learn.fine_tune(args.epochs, args.lr, freeze_epochs=1, cbs=cbs)
        else:
            learn.fit_one_cycle(args.epochs, args.lr, cbs=cbs)


if __name__ == "__main__":
    main()
