"""Lightning quick start: checkpoint to the shelf each epoch, then load the best model back.

python examples/lightning_quickstart.py        # shelf: $MODELSHELF_ROOT or ~/.modelshelf
"""

from __future__ import annotations

import lightning.pytorch as L

import modelshelf as ms
from digits_nets import DigitsCNN, accuracy, datasets, loaders
from modelshelf.integrations.lightning import ShelfCheckpoint


def main() -> None:
    checkpoint = ShelfCheckpoint("digits-cnn", monitor="val_acc", keep_last=3)  # mode: max
    trainer = L.Trainer(max_epochs=5, callbacks=[checkpoint], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(DigitsCNN(lr=0.003), *loaders())

    best = ms.get("digits-cnn:best")  # a new version only when val_acc improved
    print(f"{best.ref} {best.aliases} val_acc={best.metadata['metrics']['val_acc']:.3f}")
    model = ms.load_model("digits-cnn:best")  # rebuilt from its hparams; nothing unpickled
    print(f"test accuracy {accuracy(model, *datasets()['test'].tensors):.3f}")


if __name__ == "__main__":
    main()
