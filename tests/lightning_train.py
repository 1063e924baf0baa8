"""A tiny, deterministic Lightning training on digits, run as a script by the callback tests.

python lightning_train.py SHELF --epochs N [--resume] [--kill-after-version K] [--ddp] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning.pytorch as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import modelshelf as ms
from modelshelf.integrations.lightning import ShelfCheckpoint
from preempt import kill_when_logged
from zoo import digits


class Net(L.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y), sync_dist=True)
        self.log("worse", float(self.current_epoch))  # improves once, at epoch 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def loaders() -> tuple[DataLoader, DataLoader]:
    x, y = digits(448)
    train = DataLoader(TensorDataset(x[:320], y[:320]), batch_size=32, shuffle=False)
    val = DataLoader(TensorDataset(x[320:], y[320:]), batch_size=128)
    return train, val


class KillAfterEpoch(L.Callback):
    """Simulates a preemption right after epoch E's checkpoint (version or resume point) is
    written."""

    def __init__(self, checkpoint: ShelfCheckpoint, epoch: int) -> None:
        self.checkpoint, self.epoch = checkpoint, epoch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            self.checkpoint.engine._writer.drain()
            os.kill(os.getpid(), signal.SIGKILL)


class KillAfter(L.Callback):
    """Simulates a preemption: SIGKILL once version K of the artifact is on the shelf."""

    def __init__(self, shelf: ms.Shelf, version: int) -> None:
        self.shelf, self.version = shelf, version

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch < self.version:  # with save="all", version K is epoch K's
            return
        kill_when_logged(self.shelf, f"net:v{self.version}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shelf")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-after-version", type=int, default=None)
    parser.add_argument("--ddp", action="store_true")
    parser.add_argument("--save", default="improved")
    parser.add_argument("--monitor", default="val_loss")
    parser.add_argument("--kill-after-epoch", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    L.seed_everything(0, workers=True)
    shelf = ms.Shelf(args.shelf)
    checkpoint = ShelfCheckpoint(
        "net", shelf=shelf, monitor=args.monitor, save=args.save, resume=args.resume
    )
    callbacks: list[L.Callback] = [checkpoint]
    if args.kill_after_version is not None:
        callbacks.append(KillAfter(shelf, args.kill_after_version))
    if args.kill_after_epoch is not None:
        callbacks.append(KillAfterEpoch(checkpoint, args.kill_after_epoch))
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        accelerator="cpu",
        devices=2 if args.ddp else 1,
        strategy="ddp" if args.ddp else "auto",
    )
    model = Net()
    trainer.fit(model, *loaders())
    if args.out and trainer.is_global_zero:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, args.out)
        print("epochs run:", trainer.current_epoch, "global step:", trainer.global_step)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Before the interpreter's teardown: Gloo's worker threads may still hold tensors, and
        # destroying them during finalization aborts the process ("terminate called without
        # an active exception", exit -6). PyTorch asks scripts to do this themselves.
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
