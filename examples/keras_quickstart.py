"""Keras quick start: checkpoint to the shelf each epoch, then load the best model back.

python examples/keras_quickstart.py            # shelf: $MODELSHELF_ROOT or ~/.modelshelf
"""

from __future__ import annotations

import keras

import modelshelf as ms
from digits_data import load
from modelshelf.integrations.keras import ShelfCheckpoint


def main() -> None:
    data = load()
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])  # fmt: skip
    model.compile(optimizer=keras.optimizers.Adam(0.003),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])  # fmt: skip
    checkpoint = ShelfCheckpoint("digits-keras", monitor="val_accuracy", keep_last=3)
    model.fit(*data["train"], validation_data=data["val"], epochs=8, batch_size=64,
              callbacks=[checkpoint], verbose=0)  # fmt: skip

    best = ms.get("digits-keras:best")  # a new version only when val_accuracy improved
    print(f"{best.ref} {best.aliases} val_accuracy={best.metadata['metrics']['val_accuracy']:.3f}")
    model = ms.load_model("digits-keras:best")  # the .keras archive; no Python code needed
    _, acc = model.evaluate(*data["test"], verbose=0)
    print(f"test accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
