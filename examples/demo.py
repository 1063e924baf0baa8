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

import digits_data  # noqa: E402
import modelshelf as ms  # noqa: E402
from digits_nets import DigitsCNN, accuracy, datasets, loaders  # noqa: E402
from modelshelf.integrations.lightning import ShelfCheckpoint  # noqa: E402

NAME = "digits-cnn"


def main() -> None:
    shelf = ms.shelf()
    print(f"shelf: {shelf.url}\n")
    data = datasets()
    dataset = ms.Artifact("digits", "dataset", metadata={"rows": 1797, "source": "sklearn"})
    with shelf.run("digits-train", job_type="train") as run, tempfile.TemporaryDirectory() as tmp:
        dataset.add_dir(digits_data.save(tmp))
        run.use(shelf.log_artifact(dataset).ref)  # the same bytes each time: one version
        trainer = L.Trainer(
            max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ShelfCheckpoint(NAME, shelf=shelf, monitor="val_loss", save="all", run=run)],
        )  # fmt: skip
        trainer.fit(DigitsCNN(), *loaders())

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
    acc = accuracy(model, *data["test"].tensors)
    print(f"\nload_model({NAME + ':best'!r}) -> {type(model).__name__}; test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
