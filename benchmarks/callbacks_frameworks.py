"""How long training is blocked per checkpoint: ShelfCheckpoint against Keras's own
``ModelCheckpoint`` and fastai's ``SaveModelCallback``, each pair in the same run.

Run: ``python benchmarks/callbacks_frameworks.py [--mib 100] [--epochs 6]``. Prints a table
and writes ``benchmarks/results/callbacks_frameworks.json`` (Lightning: ``callbacks.py``).

Each framework trains the same ~100 MiB model (four square dense layers, SGD with momentum, so
the optimizer state is as large again) on random data; both callbacks of a pair save when the
monitored loss improves (it does, nearly every epoch):

- Keras: ``ModelCheckpoint(save_best_only=True)`` to a ``.keras`` file (the model, its
  weights and the optimizer's) against ``ShelfCheckpoint(monitor="loss", keep_last=1)``.
- fastai: ``SaveModelCallback(with_opt=True)`` (weights and optimizer state, ``torch.save``)
  against ``ShelfCheckpoint(monitor="valid_loss", keep_last=1)``.

Blocked time is the time spent in each callback's epoch-end hook, plus, for ShelfCheckpoint,
the wait for the last write when ``fit`` ends.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import modelshelf as ms
from common import save_results

HERE = Path(__file__).resolve().parent


def timed(cls: type, epoch_hook: str, end_hook: str | None = None) -> type:
    """A subclass that adds the time of its epoch-end hook to ``blocked`` and keeps the time
    of its end-of-fit hook (if named) in ``end_wait``."""

    def epoch_end(self: Any, *args: Any) -> None:
        t = time.perf_counter()
        getattr(cls, epoch_hook)(self, *args)
        self.blocked.append(time.perf_counter() - t)

    def fit_end(self: Any, *args: Any) -> None:
        t = time.perf_counter()
        getattr(cls, end_hook)(self, *args)
        self.end_wait = time.perf_counter() - t

    methods = {epoch_hook: epoch_end, "blocked": [], "end_wait": 0.0}
    if end_hook is not None:
        methods[end_hook] = fit_end
    return type(cls.__name__, (cls,), methods)


def race(fit: Callable[[Any], float], base: Any, ours: Any, epochs: int) -> dict[str, float]:
    """Fit with the framework's own callback, then with ShelfCheckpoint: the time each blocked
    training per checkpoint (end-of-fit wait included) and each whole fit."""
    base.blocked, ours.blocked = [], []  # the timed classes' list is shared by default
    base_fit, ours_fit = fit(base), fit(ours)
    return {
        "baseline_s_per_checkpoint": (sum(base.blocked) + base.end_wait) / epochs,
        "shelf_s_per_checkpoint": (sum(ours.blocked) + ours.end_wait) / epochs,
        # where ShelfCheckpoint's time goes: each epoch's end, and fit's end (the last write)
        "shelf_epoch_end_s": [round(t, 4) for t in ours.blocked],
        "shelf_end_of_fit_s": ours.end_wait,
        "baseline_fit_s": base_fit,
        "shelf_fit_s": ours_fit,
    }


def keras_pair(tmp: Path, width: int, epochs: int, batches: int) -> dict[str, float]:
    import keras
    import numpy as np

    from modelshelf.integrations.keras import ShelfCheckpoint

    x = np.random.default_rng(0).standard_normal((batches * 32, width)).astype("float32")

    def fit(callback: Any) -> float:
        keras.utils.set_random_seed(0)
        layers = [keras.layers.Dense(width) for _ in range(4)]
        model = keras.Sequential([keras.Input((width,)), *layers])
        model.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), loss="mse")
        t = time.perf_counter()
        model.fit(x, x * 0.5, batch_size=32, epochs=epochs, callbacks=[callback], verbose=0)
        return time.perf_counter() - t

    base = timed(keras.callbacks.ModelCheckpoint, "on_epoch_end")(
        filepath=str(tmp / "keras" / "best.keras"), monitor="loss", save_best_only=True
    )
    ours = timed(ShelfCheckpoint, "on_epoch_end", "on_train_end")(
        "wide-keras", shelf=ms.Shelf(tmp / "keras-shelf"), monitor="loss", keep_last=1
    )
    return race(fit, base, ours, epochs)


def fastai_pair(tmp: Path, width: int, epochs: int, batches: int) -> dict[str, float]:
    import torch
    from fastai.callback.tracker import SaveModelCallback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from torch import nn
    from torch.utils.data import TensorDataset

    from modelshelf.integrations.fastai import ShelfCheckpoint

    def fit(callback: Any) -> float:
        torch.manual_seed(0)
        x = torch.randn(batches * 32, width)
        dls = DataLoaders.from_dsets(
            TensorDataset(x, x * 0.5), TensorDataset(x[:64], x[:64] * 0.5),
            bs=32, device="cpu",
        )  # fmt: skip
        model = nn.Sequential(*[nn.Linear(width, width) for _ in range(4)])
        learn = Learner(dls, model, loss_func=nn.MSELoss(), path=tmp / "fastai", model_dir=".")
        t = time.perf_counter()
        with learn.no_logging(), learn.no_bar():
            learn.fit(epochs, 1e-3, cbs=[callback])
        return time.perf_counter() - t

    base = timed(SaveModelCallback, "after_epoch")(  # its after_fit loads the best: not counted
        monitor="valid_loss", fname="best", with_opt=True
    )
    ours = timed(ShelfCheckpoint, "after_epoch", "after_fit")(
        "wide-fastai", shelf=ms.Shelf(tmp / "fastai-shelf"), monitor="valid_loss", keep_last=1
    )
    return race(fit, base, ours, epochs)


def epochs_of(result: dict[str, Any]) -> int:
    return len(result["shelf_epoch_end_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batches", type=int, default=16, help="batches per epoch")
    args = parser.parse_args()
    width = int((args.mib * 2**20 / 4 / 4) ** 0.5)
    results: dict[str, Any] = {"model_mib": args.mib, "epochs": args.epochs}
    with tempfile.TemporaryDirectory(dir=HERE) as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MODELSHELF_CACHE"] = str(tmp / "cache")
        results["keras"] = keras_pair(tmp, width, args.epochs, args.batches)
        results["fastai"] = fastai_pair(tmp, width, args.epochs, args.batches)
    print(f"~{args.mib} MiB model, {args.epochs} epochs, a checkpoint each (end-of-fit wait in)")
    print(f"{'':<10}{'own callback':>16}{'ShelfCheckpoint':>18}{'ratio':>8}")
    for name, own in (("keras", "ModelCheckpoint"), ("fastai", "SaveModelCallback")):
        r = results[name]
        r["ratio"] = r["shelf_s_per_checkpoint"] / r["baseline_s_per_checkpoint"]
        epoch_ends = r["shelf_epoch_end_s"]
        r["epoch_end_ratio"] = sum(epoch_ends) / epochs_of(r) / r["baseline_s_per_checkpoint"]
        print(
            f"{name:<10}{r['baseline_s_per_checkpoint']:>14.3f} s"
            f"{r['shelf_s_per_checkpoint']:>16.3f} s{r['ratio']:>7.2f}x   ({own})"
        )
        print(
            f"{'':<10}ShelfCheckpoint at epoch ends: {', '.join(f'{t:.3f}' for t in epoch_ends)}"
            f" s ({r['epoch_end_ratio']:.2f}x); at fit's end: {r['shelf_end_of_fit_s']:.3f} s"
        )
    print(f"\nwrote {save_results('callbacks_frameworks', results)}")


if __name__ == "__main__":
    main()
