"""Lightning's basic image classifier run through LightningCLI, on digits.

The callback comes from the command line (``--trainer.callbacks+=...ShelfCheckpoint``), from a
config file, or, with ``--defaults`` (read here before the CLI parses), from
``trainer_defaults`` as a project would bake it in. The shelf is ``$MODELSHELF_ROOT``.

python lightning_cli_classifier.py fit [--defaults] [LightningCLI arguments...]
"""

from __future__ import annotations

import sys

import lightning.pytorch as L
import torch
from lightning.pytorch.cli import LightningCLI
from sklearn.datasets import load_digits
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from modelshelf.integrations.lightning import ShelfCheckpoint


class LitClassifier(L.LightningModule):
    def __init__(self, hidden_dim: int = 64, learning_rate: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.l1 = nn.Linear(64, self.hparams.hidden_dim)
        self.l2 = nn.Linear(self.hparams.hidden_dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(x.view(x.size(0), -1))))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


def digits_split() -> tuple[TensorDataset, TensorDataset]:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    return TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])


class DigitsDataModule(L.LightningDataModule):
    def __init__(self, batch_size: int = 64) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        self.train_set, self.val_set = digits_split()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


def cli_main() -> None:
    defaults: dict = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    if "--defaults" in sys.argv:
        sys.argv.remove("--defaults")
        defaults["callbacks"] = [ShelfCheckpoint("digits-cli", monitor="val_loss")]
    LightningCLI(
        LitClassifier, DigitsDataModule, seed_everything_default=1234,
        trainer_defaults=defaults, save_config_callback=None,
    )  # fmt: skip


if __name__ == "__main__":
    cli_main()
