"""The torch models of the examples. They live in a module, not in a script's ``__main__``, so
that ``load_model`` can rebuild them in another process: the class must be importable there.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from digits_data import load

Batch = tuple[torch.Tensor, torch.Tensor]

try:
    import lightning.pytorch as L
except ModuleNotFoundError:  # pip install "modelshelf[fastai]" brings torch and fastai only
    L = None


class DigitsMLP(nn.Module):
    """A plain torch MLP: ``log_model(..., init_args={"hidden": 32})`` records how to build it."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def datasets() -> dict[str, TensorDataset]:
    return {
        k: TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for k, (x, y) in load().items()
    }


def loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches and one validation batch."""
    data = datasets()
    return (
        DataLoader(data["train"], batch_size=batch_size, shuffle=True),
        DataLoader(data["val"], batch_size=len(data["val"])),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor | object, y: torch.Tensor | object) -> float:
    """Share of ``x`` that ``model`` labels as ``y`` (numpy arrays or tensors)."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


if L is not None:  # the Lightning examples' model

    class DigitsCNN(L.LightningModule):
        """A small CNN for 8x8 digit images."""

        def __init__(self, channels: int = 16, lr: float = 0.003) -> None:
            super().__init__()
            self.save_hyperparameters()  # what load_model rebuilds the module from
            self.features = nn.Sequential(
                nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            )  # fmt: skip
            self.head = nn.Linear(2 * channels * 2 * 2, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x.view(-1, 1, 8, 8)).flatten(1))

        def _loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = batch
            logits = self(x)
            return nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

        def training_step(self, batch: Batch, _i: int) -> torch.Tensor:
            loss, _ = self._loss(batch)
            self.log("train_loss", loss, on_epoch=True, on_step=False)
            return loss

        def validation_step(self, batch: Batch, _i: int) -> None:
            loss, acc = self._loss(batch)
            self.log_dict({"val_loss": loss, "val_acc": acc})

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
