"""fastai quick start: checkpoint to the shelf each epoch, then load the best model back.

python examples/fastai_quickstart.py           # shelf: $MODELSHELF_ROOT or ~/.modelshelf
"""

from __future__ import annotations

import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.metrics import accuracy as fastai_accuracy
from torch import nn

import modelshelf as ms
from digits_nets import DigitsMLP, accuracy, datasets
from modelshelf.integrations.fastai import ShelfCheckpoint


def main() -> None:
    data = datasets()
    dls = DataLoaders.from_dsets(data["train"], data["val"], bs=64, device="cpu")
    learn = Learner(dls, DigitsMLP(hidden=64), loss_func=nn.CrossEntropyLoss(),
                    metrics=fastai_accuracy)  # fmt: skip
    checkpoint = ShelfCheckpoint(
        "digits-mlp", monitor="accuracy", keep_last=3, init_args={"hidden": 64}
    )  # how load_model rebuilds the model
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(6, 0.01, cbs=checkpoint)

    best = ms.get("digits-mlp:best")  # a new version only when accuracy improved
    print(f"{best.ref} {best.aliases} accuracy={best.metadata['metrics']['accuracy']:.3f}")
    model = ms.load_model("digits-mlp:best")  # a DigitsMLP with the best weights
    print(f"test accuracy {accuracy(model, *data['test'].tensors):.3f}")


if __name__ == "__main__":
    main()
