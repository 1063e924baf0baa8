"""`make demo`: train a small CNN on scikit-learn's digits with Lightning, checkpointing to a
shelf, then compare versions, show the lineage and reload the best model for inference.

Runs on the default shelf ($MODELSHELF_ROOT or ~/.modelshelf); each run adds versions.
"""

from __future__ import annotations

import os
import tempfile
import warnings

os.environ.setdefault("PYTHONWARNINGS", "ignore")
warnings.filterwarnings("ignore")

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
from modelshelf.integrations.lightning import ShelfCheckpoint  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import modelshelf as ms  # noqa: E402

NAME = "digits-cnn"


class DigitsCNN(L.LightningModule):
    """A small CNN for 8x8 digit images."""

    def __init__(self, channels: int = 16, lr: float = 0.003) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Linear(2 * channels * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(-1, 1, 8, 8)).flatten(1))

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> None:
        loss, acc = self._loss(batch)
        self.log_dict({"val_loss": loss, "val_acc": acc})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def splits() -> dict[str, TensorDataset]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return {
        "train": TensorDataset(x[:1200], y[:1200]),
        "val": TensorDataset(x[1200:1500], y[1200:1500]),
        "test": TensorDataset(x[1500:], y[1500:]),
    }


def main() -> None:
    shelf = ms.shelf()
    print(f"shelf: {shelf.url}\n")
    data = splits()
    dataset = ms.Artifact("digits", "dataset", metadata={"rows": 1797, "source": "sklearn"})
    with shelf.run("digits-train", job_type="train") as run, tempfile.TemporaryDirectory() as tmp:
        torch.save({k: v.tensors for k, v in data.items()}, os.path.join(tmp, "digits.pt"))
        dataset.add_dir(tmp)
        run.use(shelf.log_artifact(dataset).ref)  # the same bytes each time: one version
        trainer = L.Trainer(
            max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ShelfCheckpoint(NAME, shelf=shelf, monitor="val_loss", save="all", run=run)],
        )  # fmt: skip
        trainer.fit(
            DigitsCNN(),
            DataLoader(data["train"], batch_size=64, shuffle=True),
            DataLoader(data["val"], batch_size=300),
        )

    versions = shelf.versions(NAME)[-6:]
    print(f"{'version':<18}{'aliases':<16}{'epoch':>6}{'val_loss':>10}{'val_acc':>9}")
    for v in versions:
        m = v.metadata["metrics"]
        print(f"{v.ref:<18}{','.join(v.aliases):<16}{v.metadata['epoch']:>6}"
              f"{m['val_loss']:>10.4f}{m['val_acc']:>9.3f}")  # fmt: skip

    best = shelf.get(f"{NAME}:best")
    print(f"\n{shelf.diff(versions[0].ref, best.ref)}\n")
    print(shelf.lineage(best.ref, direction="upstream"))

    model = ms.load_model(f"{NAME}:best", shelf=shelf)
    x, y = data["test"].tensors
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(
        f"\nload_model({NAME + ':best'!r}) -> {type(model).__name__}; test accuracy {accuracy:.3f}"
    )


if __name__ == "__main__":
    main()
