"""PyTorch Lightning: ``ShelfCheckpoint``, a ``Callback`` over modelshelf's checkpoint engine.

Works with both ``lightning.pytorch`` and ``pytorch_lightning`` (whichever is installed;
``lightning.pytorch`` first). Usage::

    from modelshelf.integrations.lightning import ShelfCheckpoint
    trainer = L.Trainer(callbacks=[ShelfCheckpoint("digits-cnn", monitor="val_loss")])
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from modelshelf._deps import require
from modelshelf._training.engine import CheckpointEngine, keras_like_mode, scalar_metrics
from modelshelf._training.options import make_options, signature_with

require("lightning", "modelshelf.integrations.lightning")  # names the extra if neither is there


def _packages() -> list[Any]:
    found = []
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            continue
    return found


# One class serves both packages: it derives from the Callback (and CheckpointIO) of each
# one installed, so either package's Trainer accepts it.
_PACKAGES = _packages()
_CALLBACKS = tuple(p.Callback for p in _PACKAGES)
_CHECKPOINT_IOS = tuple(
    importlib.import_module(f"{p.__name__}.plugins.io").CheckpointIO for p in _PACKAGES
)

from modelshelf._errors import ModelshelfError  # noqa: E402
from modelshelf._training.torch_state import (  # noqa: E402
    HostBuffers,
    load_resume,
    model_parts,
    optimizer_config,
)


class _Capture(*_CHECKPOINT_IOS):  # type: ignore[misc]
    """Receives the checkpoint dict ``trainer.save_checkpoint`` builds, instead of a file."""

    def __init__(self) -> None:
        self.checkpoint: dict[str, Any] | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        self.checkpoint = checkpoint

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Any = None) -> Any:
        raise NotImplementedError

    def remove_checkpoint(self, path: Any) -> None:
        pass


def _lightning_mode(monitor: str) -> str:
    return keras_like_mode(monitor) or "min"  # Lightning's ModelCheckpoint defaults to "min"


class ShelfCheckpoint(*_CALLBACKS):  # type: ignore[misc]
    """Checkpoint to the artifact ``name`` each checked epoch, after validation.

    Takes every option of ``CheckpointOptions`` as a keyword (``monitor``, ``mode``,
    ``save``, ``keep_last``, ``resume``, ...; the full list with defaults is in the signature
    and in docs/callbacks.md), plus ``allow_pickle``: let ``resume=True`` unpickle a training
    state that ``weights_only`` loading refuses (only for checkpoints you trust).
    """

    def __init__(self, name: str, *, allow_pickle: bool = False, **options: Any) -> None:
        super().__init__()
        self.engine = CheckpointEngine(name, make_options(options), auto_mode=_lightning_mode)
        self.allow_pickle = allow_pickle
        self._host = HostBuffers()  # reused by every snapshot of this callback
        self._last_step = -1
        self._validated = False

    @property
    def state_key(self) -> str:
        return f"ShelfCheckpoint{{name={self.engine.name!r}, monitor={self.engine.monitor!r}}}"

    # -- fit starts: config, run, resume -------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_step, self._validated = -1, False
        if trainer.fast_dev_run:  # a smoke test: no run, resume or version (as ModelCheckpoint)
            return
        config = {
            "hparams": dict(pl_module.hparams),
            "optimizers": [optimizer_config(o) for o in trainer.optimizers],
            "schedulers": [
                {
                    "class": type(c.scheduler).__name__,
                    "interval": c.interval,
                    "frequency": c.frequency,
                }
                for c in trainer.lr_scheduler_configs
            ],
            "trainer": {
                "max_epochs": trainer.max_epochs,
                "precision": str(trainer.precision),
                "accumulate_grad_batches": trainer.accumulate_grad_batches,
                "gradient_clip_val": trainer.gradient_clip_val,
                "strategy": type(trainer.strategy).__name__,
                "devices": trainer.num_devices,
                "num_nodes": trainer.num_nodes,
            },
            "seed": os.environ.get("PL_GLOBAL_SEED"),
        }
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            config["datamodule_hparams"] = dict(datamodule.hparams)
        self.engine.begin(config, is_writer=trainer.is_global_zero)
        if self.engine.resume:
            self._resume(trainer, pl_module)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # The dataloaders exist from here on: record batch size and dataset sizes.
        data: dict[str, Any] = {}
        train = trainer.train_dataloader
        if train is not None and getattr(train, "batch_size", None) is not None:
            data["batch_size"] = train.batch_size
        for split, loader in (("train", train), ("val", trainer.val_dataloaders)):
            dataset = getattr(loader, "dataset", None)
            if dataset is not None and hasattr(dataset, "__len__"):
                data.setdefault("dataset_sizes", {})[split] = len(dataset)
        if data:
            self.engine.update_config(data)

    def _resume(self, trainer: Any, pl_module: Any) -> None:
        source = self.engine.resume_from() if trainer.is_global_zero else None
        described = trainer.strategy.broadcast(self.engine.describe_source(source), src=0)
        if described is None:
            return
        if source is None:
            source = self.engine.open_source(described)
        weights, state = load_resume(source, self.allow_pickle)
        pl_module.load_state_dict(weights)
        for optimizer, saved in zip(
            trainer.optimizers, state.get("optimizer_states", []), strict=False
        ):
            optimizer.load_state_dict(saved)
        for config, saved in zip(
            trainer.lr_scheduler_configs, state.get("lr_schedulers", []), strict=False
        ):
            config.scheduler.load_state_dict(saved)
        for callback in trainer.callbacks:
            saved = state.get("callbacks", {}).get(callback.state_key)
            if saved is not None:
                callback.load_state_dict(saved)
        for owner in (getattr(trainer, "datamodule", None), trainer.precision_plugin):
            key = type(owner).__qualname__  # where Lightning files their states (AMP scaler, ...)
            if owner is not None and key in state:
                owner.load_state_dict(state[key])
        trainer.fit_loop.load_state_dict(state["loops"]["fit_loop"])
        pl_module.on_load_checkpoint(state)
        self._last_step = int(state.get("global_step", -1))

    # -- checks ---------------------------------------------------------------------------
    def _skip(self, trainer: Any) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking or trainer.state.fn != "fit"

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._skip(trainer):
            self._validated = True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # Decide once the epoch's training metrics are reduced (``*_epoch``), so a version's
        # metrics are all of its own epoch; validation, when it runs, has run by now. An
        # epoch without validation (check_val_every_n_epoch > 1) is checked only when there
        # is no validation at all, as ModelCheckpoint does.
        validated, self._validated = self._validated, False
        if self._skip(trainer):
            return
        metrics = scalar_metrics(trainer.callback_metrics)
        if trainer.is_global_zero:
            self.engine.observe(metrics, epoch=trainer.current_epoch, step=trainer.global_step)
        if validated or not trainer.enable_validation:
            self._check(trainer, pl_module, metrics)

    def _check(self, trainer: Any, pl_module: Any, metrics: dict[str, float]) -> None:
        epoch, step = trainer.current_epoch, trainer.global_step
        if not self.engine.due(epoch) or step == self._last_step:
            return
        # Rank 0 decides and tells the others, so that all take the same path to the barrier
        # in save_checkpoint; a failure on rank 0 (a monitor typo, a write error) is raised
        # on every rank instead of leaving the others waiting.
        decision, failure = None, None
        if trainer.is_global_zero:
            try:
                if self.engine.write_error is not None:
                    raise self.engine.write_error
                decision = self.engine.decide(metrics)
            except Exception as exc:
                failure = exc
        decision, message = trainer.strategy.broadcast(
            (decision, None if failure is None else f"{type(failure).__name__}: {failure}"), src=0
        )
        if message is not None:
            if failure is not None:
                raise failure
            raise ModelshelfError(f"ShelfCheckpoint failed on rank 0: {message}")
        self.engine.note(decision)
        self._last_step = step
        state = None
        if self.engine.keeps_points:
            capture, original = _Capture(), trainer.strategy.checkpoint_io
            trainer.strategy.checkpoint_io = capture
            try:
                # every rank calls it: it ends with a barrier
                trainer.save_checkpoint("modelshelf-capture.ckpt", weights_only=False)
            finally:
                trainer.strategy.checkpoint_io = original
            state = capture.checkpoint
        framework = "lightning"
        self.engine.commit(
            decision, epoch=epoch, step=step, metrics=metrics,
            snapshot=lambda: model_parts(pl_module, state, framework, buffers=self._host),
        )  # fmt: skip

    # -- fit ends -------------------------------------------------------------------------
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        failure = None
        if trainer.is_global_zero:
            try:
                self.engine.end()
            except Exception as exc:
                failure = exc
        message = trainer.strategy.broadcast(None if failure is None else str(failure), src=0)
        if failure is not None:
            raise failure
        if message is not None:
            raise ModelshelfError(f"ShelfCheckpoint failed on rank 0: {message}")

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if trainer.is_global_zero:
            self.engine.end(error=exception)  # keep what was written; the run is marked failed

    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.engine.load_state_dict(state_dict)


ShelfCheckpoint.__init__.__signature__ = signature_with(ShelfCheckpoint.__init__)  # type: ignore[attr-defined]
