"""Keras 3: ``ShelfCheckpoint``, a ``keras.callbacks.Callback`` over modelshelf's engine.

Works under every Keras backend (TensorFlow, torch, JAX). Usage::

    from modelshelf.integrations.keras import ShelfCheckpoint
    cb = ShelfCheckpoint("digits-cnn", monitor="val_loss", resume=True)
    model.fit(x, y, epochs=20, initial_epoch=cb.initial_epoch, callbacks=[cb])
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from modelshelf._deps import require
from modelshelf._errors import ConflictError
from modelshelf._models.keras import KERAS_FILE, keras_parts, keras_weights_parts
from modelshelf._training.engine import CheckpointEngine, Parts, keras_like_mode, scalar_metrics
from modelshelf._training.options import make_options, signature_with

keras = require("keras", "modelshelf.integrations.keras")

DEFAULT_MONITOR = "val_loss"  # as keras.callbacks.ModelCheckpoint


def _is_chief() -> bool:
    """Multi-worker training names its chief in TF_CONFIG; everything else is the chief."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task = config.get("task", {})
    kind = task.get("type")
    if kind in (None, "chief"):
        return True
    # Without a chief in the cluster, worker 0 acts as the chief (tf.distribute's rule).
    no_chief = "chief" not in config.get("cluster", {})
    return bool(kind == "worker" and int(task.get("index", 0)) == 0 and no_chief)


class ShelfCheckpoint(keras.callbacks.Callback):  # type: ignore[misc, name-defined]
    """Checkpoint to the artifact ``name`` at the end of each checked epoch.

    Takes every option of ``CheckpointOptions`` as a keyword (the full list with defaults is
    in the signature and in docs/callbacks.md). A version holds the native ``.keras`` archive
    (architecture, weights, optimizer state) or, with ``save_weights_only=True``,
    ``model.weights.h5``. With ``resume=True`` the weights and optimizer state come back from
    ``latest`` at train begin; Keras gives callbacks no public way to move the starting epoch,
    so pass ``initial_epoch=cb.initial_epoch`` to ``fit`` (it is the epoch after ``latest``'s,
    or 0).
    """

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__()
        self.engine = CheckpointEngine(
            name,
            make_options(options, default_monitor=DEFAULT_MONITOR),
            auto_mode=keras_like_mode,
            state_file=KERAS_FILE,
        )
        self._resumed: Any = None
        self._first_epoch = True

    @property
    def initial_epoch(self) -> int:
        """The epoch to start from: the one after ``latest``'s when resuming, else 0."""
        if not self.engine.resume:
            return 0
        if self._resumed is None:
            self._resumed = self.engine.resume_from() or False
        return int(self._resumed.metadata["epoch"]) + 1 if self._resumed else 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        config: dict[str, Any] = {
            "params": dict(self.params or {}),
            "backend": keras.backend.backend(),
        }
        try:
            config["model"] = model.get_config()
        except NotImplementedError:  # a subclassed model without get_config
            config["model"] = {"class": type(model).__qualname__}
        if model.optimizer is not None:
            config["optimizer"] = model.optimizer.get_config()
        config["compile"] = model.get_compile_config() or {}  # loss, metrics, ... as given
        config["keras"] = keras.__version__
        self._first_epoch = True
        self.engine.begin(config, is_writer=_is_chief())
        if self.engine.resume and self.initial_epoch > 0:
            self._restore()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        first, self._first_epoch = self._first_epoch, False
        if not first or not self.engine.resume or epoch >= self.initial_epoch:
            return
        # Keras gives callbacks no public way to move the first epoch: never train again,
        # silently, the epochs the resumed checkpoint had done.
        error = ConflictError(
            f"ShelfCheckpoint(resume=True) restored {self._resumed.ref} (epoch "
            f"{self.initial_epoch - 1}), but fit started at epoch {epoch}. Pass "
            "initial_epoch=cb.initial_epoch to fit: model.fit(..., "
            "initial_epoch=cb.initial_epoch, callbacks=[cb])."
        )
        self.engine.end(error=error)
        raise error

    def _restore(self) -> None:
        path = self._resumed.path(KERAS_FILE)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(path)  # the archive's weights and optimizer variables

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = scalar_metrics(logs or {})
        step = (epoch + 1) * int((self.params or {}).get("steps") or 0)
        self.engine.observe(metrics, epoch=epoch, step=step)
        if not self.engine.due(epoch):
            return
        decision = self.engine.check(metrics)
        model, weights_only = self.model, self.engine.save_weights_only

        def snapshot() -> Parts:
            # Keras writes its archive itself: done here, on the training thread; hashing and
            # storing it happen in the background.
            tmp = Path(tempfile.mkdtemp(prefix="modelshelf-keras-"))
            cleanup = lambda: shutil.rmtree(tmp, ignore_errors=True)  # noqa: E731
            blobs, info = (keras_weights_parts if weights_only else keras_parts)(model, tmp)
            return Parts(dict(blobs), info, cleanup=cleanup)

        self.engine.commit(decision, epoch=epoch, step=step, metrics=metrics, snapshot=snapshot)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.engine.end()


ShelfCheckpoint.__init__.__signature__ = signature_with(  # type: ignore[attr-defined]
    ShelfCheckpoint.__init__, default_monitor=DEFAULT_MONITOR
)
