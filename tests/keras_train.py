"""A tiny deterministic Keras training on digits, run as a script by the callback tests.

python keras_train.py SHELF --epochs N [--resume] [--kill-after-version K] [--out FILE]
(KERAS_BACKEND picks the backend.)
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
from sklearn.datasets import load_digits

import modelshelf as ms
from modelshelf.integrations.keras import ShelfCheckpoint
from preempt import kill_when_logged


def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype("float32"), y.astype("int64")


def build() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


class KillAfter(keras.callbacks.Callback):
    def __init__(self, shelf: ms.Shelf, version: int) -> None:
        super().__init__()
        self.shelf, self.version = shelf, version

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        if epoch < self.version:
            return
        kill_when_logged(self.shelf, f"net:v{self.version}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shelf")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-after-version", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    shelf = ms.Shelf(args.shelf)
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="val_loss", save="all", resume=args.resume)
    callbacks: list[keras.callbacks.Callback] = [cb]
    if args.kill_after_version is not None:
        callbacks.append(KillAfter(shelf, args.kill_after_version))
    x, y = data()
    model = build()
    model.fit(
        x[:256], y[:256], validation_data=(x[256:384], y[256:384]), epochs=args.epochs,
        initial_epoch=cb.initial_epoch, batch_size=32, shuffle=False, verbose=0,
        callbacks=callbacks,
    )  # fmt: skip
    if args.out:
        np.savez(args.out, *[np.asarray(w) for w in model.get_weights()])
    print("backend", keras.backend.backend())


if __name__ == "__main__":
    main()
