"""Tiny models shared by the model tests and by the fresh processes that load them."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """A plain module with init arguments (recorded with init_args=)."""

    def __init__(self, d_in: int, hidden: int, d_out: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TiedLM(nn.Module):
    """An embedding tied to the output layer: one tensor under two names."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.body = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(self.embed(ids))))


def lightning_classifier() -> type:
    import lightning.pytorch as L

    class DigitsClassifier(L.LightningModule):
        def __init__(self, hidden: int = 32, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
            self.example_input_array = torch.zeros(1, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    return DigitsClassifier


DigitsClassifier = lightning_classifier()
DigitsClassifier.__qualname__ = "DigitsClassifier"
DigitsClassifier.__module__ = __name__


def digits(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x[:n] / 16.0, dtype=torch.float32), torch.tensor(y[:n])


class WithBuffer(nn.Module):
    """A module that makes a tensor outside its state_dict (a non-persistent buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 4)
        self.register_buffer("scale", torch.arange(1.0, 5.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale
