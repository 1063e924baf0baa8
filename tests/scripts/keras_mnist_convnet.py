"""keras.io's "Simple MNIST convnet" on digits (upscaled to 16x16), with the one line a user
adds: ``callbacks=[ShelfCheckpoint(...)]``.

python keras_mnist_convnet.py SHELF --epochs N [--resume] [--initial-epoch]
    [--kill-after-epoch K] [--seed S]
Prints one JSON line per epoch with the logs Keras gives callbacks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import keras
import numpy as np
from keras import layers
from sklearn.datasets import load_digits

from modelshelf.integrations.keras import ShelfCheckpoint


def data() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    x = np.kron(digits.images, np.ones((2, 2))).astype("float32") / 16  # 16x16, in [0, 1]
    return np.expand_dims(x, -1), keras.utils.to_categorical(digits.target, 10)


class Report(keras.callbacks.Callback):
    def __init__(self, kill_after: int | None, checkpoint: ShelfCheckpoint) -> None:
        super().__init__()
        self.kill_after, self.checkpoint = kill_after, checkpoint

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        print(json.dumps({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}))
        sys.stdout.flush()
        if self.kill_after is not None and epoch >= self.kill_after:
            self.checkpoint.engine._writer.drain()  # the write of this epoch, then preemption
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("shelf")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--initial-epoch", action="store_true")
    parser.add_argument("--kill-after-epoch", type=int, default=None)
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    x_train, y_train = data()

    model = keras.Sequential(
        [
            keras.Input(shape=(16, 16, 1)),
            layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPooling2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    cb = ShelfCheckpoint("digits-cnn", shelf=args.shelf, monitor="val_accuracy", resume=args.resume)
    fit_args = {"initial_epoch": cb.initial_epoch} if args.initial_epoch else {}
    model.fit(
        x_train, y_train, batch_size=128, epochs=args.epochs, validation_split=0.1, verbose=0,
        callbacks=[cb, Report(args.kill_after_epoch, cb)], **fit_args,
    )  # fmt: skip


if __name__ == "__main__":
    main()
