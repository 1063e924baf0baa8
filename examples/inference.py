"""Inference by alias: load the version an alias points to today, predict, check the accuracy.

    python examples/inference.py [REF]      # default: digits-cnn:best (a quick start logs it)

The alias is resolved once, and the model loaded from that exact version, so a promotion that
happens meanwhile cannot mix two versions. A torch model is rebuilt from its recorded class,
which this script imports itself (digits_nets): load_model imports nothing a shelf names. A
Keras model needs no code at all.
"""

from __future__ import annotations

import sys

import numpy as np

import modelshelf as ms
from digits_data import load


def predict(model: object, framework: str, x: np.ndarray) -> np.ndarray:
    """Class labels for a batch of 8x8 images, whichever framework the version holds."""
    if framework == "keras":
        return np.asarray(model.predict(x, verbose=0)).argmax(1)  # type: ignore[attr-defined]
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()  # type: ignore[operator]


def main(ref: str) -> None:
    try:
        version = ms.get(ref)  # "name:alias" -> one immutable version
    except ms.NotFoundError as exc:
        sys.exit(f"{exc}\nLog a model first: python examples/lightning_quickstart.py")
    framework = version.metadata["model"]["format"]
    if framework in ("torch", "fastai"):
        import digits_nets  # noqa: F401 - the classes these versions were logged from
    model = ms.load_model(version.ref)  # pinned: "digits-cnn:v7", not the moving alias
    x, y = load()["test"]
    labels = predict(model, framework, x)
    print(f"{ref} -> {version.ref} ({framework}, {version.metadata['model']['parameters']:,} "
          f"parameters, logged {version.created_at:%Y-%m-%d %H:%M})")  # fmt: skip
    print(f"first ten predictions {labels[:10].tolist()}, labels {y[:10].tolist()}")
    print(f"test accuracy {(labels == y).mean():.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "digits-cnn:best")
