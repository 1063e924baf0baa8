"""scikit-learn's bundled digits (1,797 8x8 images, no download), split the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

Split = tuple[np.ndarray, np.ndarray]


def load() -> dict[str, Split]:
    """``train`` (1,200), ``val`` (300) and ``test`` (297): pixels in [0, 1] as float32, labels."""
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype("float32"), y.astype("int64")
    return {
        "train": (x[:1200], y[:1200]),
        "val": (x[1200:1500], y[1200:1500]),
        "test": (x[1500:], y[1500:]),
    }


def save(folder: str | Path) -> Path:
    """Write the splits as ``train.npz``, ``val.npz``, ``test.npz`` (the same bytes every time)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in load().items():
        np.savez(folder / f"{split}.npz", x=x, y=y)
    return folder


def read(folder: str | Path) -> dict[str, Split]:
    """The splits back from a folder that ``save`` wrote (a downloaded dataset version)."""
    out = {}
    for split in ("train", "val", "test"):
        with np.load(Path(folder) / f"{split}.npz") as f:
            out[split] = (f["x"], f["y"])
    return out
