"""scikit-learn's digits as an image folder, laid out as fastai's MNIST sample is
(``train/<label>/<n>.png``, ``valid/<label>/<n>.png``): what the user scripts read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def digits_folder(root: Path, n: int = 1797, valid: float = 0.25) -> Path:
    """Write ``n`` digits (8x8, grey, 0-255) under ``root`` once; return ``root``."""
    if (root / "done").exists():
        return root
    data = load_digits()
    images = (data.images[:n] * (255 / 16)).round().astype(np.uint8)
    cut = int(n * (1 - valid))
    for i, (image, label) in enumerate(zip(images, data.target[:n], strict=True)):
        folder = root / ("train" if i < cut else "valid") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(folder / f"{i}.png")
    (root / "done").touch()
    return root
