"""Keras 3: ``ShelfCheckpoint``, a ``keras.callbacks.Callback`` over modelshelf's engine.

Works under every Keras backend (TensorFlow, torch, JAX). Usage::

    from modelshelf.integrations.keras import ShelfCheckpoint
    cb = ShelfCheckpoint("digits-cnn", monitor="val_loss", resume=True)
    model.fit(x, y, epochs=20, initial_epoch=cb.initial_epoch, callbacks=[cb])
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np  # Keras's own dependency

from modelshelf._deps import require
from modelshelf._errors import ConflictError
from modelshelf._models.keras import (
    KERAS_FILE,
    WEIGHTS_FILE,
    keras_info,
    keras_parts,
    keras_weights_info,
    keras_weights_parts,
)
from modelshelf._training.engine import CheckpointEngine, Parts, keras_like_mode, scalar_metrics
from modelshelf._training.options import make_options, signature_with

keras = require("keras", "modelshelf.integrations.keras")
logger = logging.getLogger("modelshelf")

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
        self._shadow: _Shadow | bool | None = None  # None: not tried yet; False: cannot be
        self._cloning: concurrent.futures.Future[Any] | None = None

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
        self._shadow = None  # the model may have been compiled anew since the last fit
        self.engine.begin(config, is_writer=_is_chief())
        # The shadow is cloned beside the first epoch's training, not at its end.
        self._cloning = _Shadow.start(model) if self.engine.is_writer else None
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
        if self._shadow is None and self.engine.wants_snapshot(decision) and self.engine.is_writer:
            self._shadow = _Shadow.of(model, self._cloning) or False
            self._cloning = None

        def snapshot() -> Parts:
            shadow = self._shadow
            if isinstance(shadow, _Shadow):  # training waits for the copy; the archive is
                # made in the background
                info = keras_weights_info() if weights_only else keras_info(model)
                file, made, cleanup = shadow.archive(shadow.copy(model), weights_only)
                return Parts({}, info, {file: made}, cleanup=cleanup)
            # Keras writes its archive itself: here, on the training thread; hashing and
            # storing it happen in the background.
            tmp = Path(tempfile.mkdtemp(prefix="modelshelf-keras-"))
            cleanup = lambda: shutil.rmtree(tmp, ignore_errors=True)  # noqa: E731
            blobs, info = (keras_weights_parts if weights_only else keras_parts)(model, tmp)
            return Parts(dict(blobs), info, cleanup=cleanup)

        self.engine.commit(decision, epoch=epoch, step=step, metrics=metrics, snapshot=snapshot)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.engine.end()


class _Shadow:
    """A second model like the one in training (``keras.models.clone_model``, compiled the
    same), which a thread of its own fills with a copy of the weights and optimizer variables
    and saves: training waits only for that copy to host memory, not for the archive.

    The clone is made on that thread while the first epoch trains (``start``, when the model
    is built at fit start); ``of`` takes it at the first checkpoint, or clones there if it
    cannot be used. ``of`` returns None for a model it cannot stand in for: one that cannot be
    cloned (a subclassed model without ``get_config``), or whose clone does not hold the same
    variables in the same shapes and dtypes. Such a model is saved on the training thread, as
    Keras's own ``ModelCheckpoint`` does.
    """

    def __init__(self, clone: Any, warm: bool = False) -> None:
        self.model = clone
        self._free: list[list[Any]] = []  # copies already saved, to copy into again
        self._lock = threading.Lock()
        if warm:
            # Arrays to copy into, their memory touched now: the first copy then costs no
            # page faults either (most of what a first copy costs).
            arrays = [np.empty_like(_host_view(v)) for v in _variables(clone)]
            for array in arrays:
                array.fill(0)
            self._free.append(arrays)

    @staticmethod
    def _clone(model: Any, build_optimizer: bool) -> Any:
        clone = keras.models.clone_model(model)
        compiled = model.get_compile_config()
        if compiled:
            clone.compile_from_config(compiled)
        optimizer = getattr(clone, "optimizer", None)
        if build_optimizer and optimizer is not None and not optimizer.built:
            optimizer.build(clone.trainable_variables)
        return clone

    @classmethod
    def start(cls, model: Any) -> concurrent.futures.Future[_Shadow] | None:
        """Make a shadow of ``model`` on the archivist's thread, its optimizer built (the
        model's is built at its first step), if the model is built; else None."""
        if not getattr(model, "built", False) or not model.weights:
            return None
        return _archivist().submit(lambda: cls(cls._clone(model, True), warm=True))

    @classmethod
    def of(cls, model: Any, started: concurrent.futures.Future[_Shadow] | None) -> _Shadow | None:
        """The shadow ``start`` made (waited for if under way; not if still queued behind
        other archives), if it stands in for ``model`` now; else one made here."""
        if started is not None and not started.cancel():
            with contextlib.suppress(Exception):  # made again below, and told there
                shadow = started.result()
                if _same_variables(shadow.model, model):
                    return shadow
        try:
            clone = cls._clone(model, build_optimizer=getattr(model.optimizer, "built", False))
            if not _same_variables(clone, model):
                raise ValueError("the clone's variables differ from the model's")
        except Exception as exc:
            logger.info(
                "ShelfCheckpoint: %s cannot be cloned (%s); its checkpoints are saved on the "
                "training thread", type(model).__qualname__, exc,
            )  # fmt: skip
            return None
        return cls(clone)

    def copy(self, model: Any) -> list[Any]:
        """The values of ``model``'s variables, copied to host memory (on the training thread),
        into the arrays of a copy already saved where there is one."""
        with self._lock:
            buffers = self._free.pop() if self._free else []
        out = []
        for i, variable in enumerate(_variables(model)):
            value = _host_view(variable)
            buf = buffers[i] if i < len(buffers) else None
            if buf is None or buf.shape != value.shape or buf.dtype != value.dtype:
                buf = np.empty_like(value)
            np.copyto(buf, value)
            out.append(buf)
        return out

    def archive(
        self, arrays: list[Any], weights_only: bool
    ) -> tuple[str, Callable[[Path], None], Callable[[], None]]:
        """Start making the archive of those values, in the background; return its file name,
        what puts it at a path once made (for ``Parts.files``) and what removes it.

        It is made on a thread of its own, started now, not by the writer: the writer may
        run at interpreter exit (fit died; no hook says so), when h5py can no longer write.
        Threads of a ``ThreadPoolExecutor`` are joined before exit handlers run."""
        file = WEIGHTS_FILE if weights_only else KERAS_FILE
        tmp = Path(tempfile.mkdtemp(prefix="modelshelf-keras-"))
        made = _archivist().submit(self._save, arrays, tmp / file, weights_only)

        def place(path: Path) -> None:
            made.result()
            os.replace(tmp / file, path)

        return file, place, lambda: shutil.rmtree(tmp, ignore_errors=True)

    def _save(self, arrays: list[Any], path: Path, weights_only: bool) -> None:
        try:
            for variable, value in zip(_variables(self.model), arrays, strict=True):
                variable.assign(value)
            (self.model.save_weights if weights_only else self.model.save)(path)
        finally:
            # Free to copy into again only now: a backend may have kept a view of them.
            with self._lock:
                if len(self._free) < 2:
                    self._free.append(arrays)


@functools.cache
def _archivist() -> concurrent.futures.ThreadPoolExecutor:
    """The one thread that makes archives from shadows, one at a time."""
    return concurrent.futures.ThreadPoolExecutor(1, "modelshelf-keras")


def _same_variables(clone: Any, model: Any) -> bool:
    def layout(m: Any) -> list[tuple[tuple[int, ...], str]]:
        return [(tuple(v.shape), str(v.dtype)) for v in _variables(m)]

    return layout(clone) == layout(model)


def _host_view(variable: Any) -> Any:
    """A variable's values as an array in host memory: a view of them where the backend gives
    one (TensorFlow on the CPU), else a copy; either is copied once more by the caller."""
    value = variable.value
    read = getattr(value, "read_value", None)  # a tf.Variable: numpy views the tensor read
    if callable(read):
        value = read()
    try:
        return np.asarray(value)
    except (TypeError, RuntimeError, ValueError):  # torch: a tensor that requires grad, or
        return np.asarray(keras.ops.convert_to_numpy(value))  # on a GPU


def _variables(model: Any) -> list[Any]:
    """Everything a checkpoint holds: the model's weights, then its optimizer's variables."""
    optimizer = getattr(model, "optimizer", None)
    return [*model.weights, *(optimizer.variables if optimizer is not None else [])]


ShelfCheckpoint.__init__.__signature__ = signature_with(  # type: ignore[attr-defined]
    ShelfCheckpoint.__init__, default_monitor=DEFAULT_MONITOR
)
