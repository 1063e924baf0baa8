"""fastai: ``ShelfCheckpoint``, a fastai ``Callback`` over modelshelf's checkpoint engine.

Usage::

    from modelshelf.integrations.fastai import ShelfCheckpoint
    learn.fit_one_cycle(10, cbs=ShelfCheckpoint("digits-cnn", monitor="valid_loss"))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelshelf._deps import require
from modelshelf._training.engine import CheckpointEngine, scalar_metrics
from modelshelf._training.options import make_options, signature_with

require("fastai", "modelshelf.integrations.fastai")

from fastai.callback.core import Callback, CancelEpochException  # noqa: E402
from fastai.learner import Recorder, SkipToEpoch  # noqa: E402
from fastai.torch_core import rank_distrib  # noqa: E402

from modelshelf._models.fastai import fastai_recipe, learner_settings  # noqa: E402
from modelshelf._training.torch_state import HostBuffers, load_resume, model_parts  # noqa: E402

DEFAULT_MONITOR = "valid_loss"  # as fastai's SaveModelCallback


def _plain(value: Any) -> Any:
    """A numpy scalar as a Python number (fit_one_cycle's schedules set the lr as one), so the
    optimizer state loads with ``weights_only=True``; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def _fastai_mode(monitor: str) -> str:
    """TrackerCallback's rule: names with ``loss`` or ``error`` minimise, others maximise."""
    return "min" if "loss" in monitor or "error" in monitor else "max"


class _SkipDoneEpochs(Callback):  # type: ignore[misc]
    """Skip the epochs a resumed fit already did, as ``fit(start_epoch=)`` does with fastai's
    ``SkipToEpoch``, and at its place in the order: after ``ProgressCallback``, whose bar must
    see every epoch from 0 (skipping earlier breaks fastprogress's timing).

    ``ShelfCheckpoint`` adds one for a resumed fit and removes it in ``after_fit``; one left
    behind by a fit that died of an exception removes itself when the next fit starts.
    """

    order = SkipToEpoch.order

    def __init__(self, skip_to: int) -> None:
        self.skip_to = skip_to

    def before_fit(self) -> None:
        self.learn.remove_cb(self)  # added during an earlier fit's before_fit: stale now

    def before_epoch(self) -> None:
        if self.epoch < self.skip_to:
            raise CancelEpochException


def _phase_of(source: Any) -> int:
    """The fit (of fine_tune's) a resume source was saved in: 0 unless it says otherwise."""
    phase = (source.state if hasattr(source, "state") else source.metadata).get("phase", 0)
    return phase if isinstance(phase, int) and not isinstance(phase, bool) and phase >= 0 else 0


class ShelfCheckpoint(Callback):  # type: ignore[misc]
    """Checkpoint to the artifact ``name`` after each checked epoch.

    Takes every option of ``CheckpointOptions`` as a keyword (the full list with defaults is
    in the signature and in docs/callbacks.md), plus ``init_args`` (the arguments that
    rebuild the model, so that ``load_model`` needs no ``model=``) and ``allow_pickle`` (let
    ``resume`` unpickle a state that ``weights_only`` loading refuses).
    """

    order = Recorder.order + 1  # after the Recorder has the epoch's values
    remove_on_fetch = True

    def __init__(
        self,
        name: str,
        *,
        init_args: dict[str, Any] | None = None,
        allow_pickle: bool = False,
        **options: Any,
    ) -> None:
        self.engine = CheckpointEngine(
            name, make_options(options, default_monitor=DEFAULT_MONITOR), auto_mode=_fastai_mode
        )
        self.init_args, self.allow_pickle, self.skip_to = init_args, allow_pickle, 0
        self._skipper: _SkipDoneEpochs | None = None
        # Fits of one learner with this callback (fine_tune's two): phase, and where its
        # epochs and steps start, so that epoch numbers keep increasing across them.
        self._learner: Any = None
        self.phase, self.epoch_offset, self.step_offset = 0, 0, 0
        self._last_n_epoch, self._last_steps = 0, 0
        self._resume_checked = False
        self._host = HostBuffers()  # reused by every snapshot of this callback
        self._pending: tuple[int, Any] | None = None  # (phase, (weights, state)) to restore

    def before_fit(self) -> None:
        # Like TrackerCallback: stay out of lr_find and get_preds.
        self.run = not hasattr(self, "lr_finder") and not hasattr(self, "gather_preds")
        if not self.run:
            return
        learn = self.learn
        params = list(learn.model.parameters())
        config = {
            "learner": learner_settings(learn),
            "n_epoch": self.n_epoch,
            "batch_size": learn.dls.bs,
            "n_batches": {"train": len(learn.dls.train), "valid": len(learn.dls.valid)},
            "n_items": {"train": len(learn.dls.train_ds), "valid": len(learn.dls.valid_ds)},
            "model": {
                "class": type(learn.model).__qualname__,
                "parameters": sum(p.numel() for p in params),
            },
            "frozen": getattr(learn.opt, "frozen_idx", 0) > 0,
        }
        self._next_phase(learn)
        config["phase"] = self.phase
        self.engine.begin(config, is_writer=rank_distrib() == 0)
        self.engine.phase = self.phase
        self.skip_to = 0
        if self.engine.resume:
            self._resume()

    def _next_phase(self, learn: Any) -> None:
        if self._learner is learn:  # another fit of the same learner: fine_tune's second
            self.phase += 1
            self.epoch_offset += self._last_n_epoch
            self.step_offset += self._last_steps
        else:
            self._learner, self.phase, self.epoch_offset, self.step_offset = learn, 0, 0, 0
        self._last_n_epoch, self._last_steps = self.n_epoch, 0

    def _resume(self) -> None:
        if not self._resume_checked:  # once per callback: at the first fit (phase)
            self._resume_checked = True
            source = self.engine.resume_from()
            if source is not None:
                phase = _phase_of(source)
                self._pending = (phase, load_resume(source, self.allow_pickle))
        if self._pending is None:
            return
        phase, (weights, state) = self._pending
        if self.phase < phase:
            self.skip_to = self.n_epoch  # a phase the interrupted training had finished
        elif self.phase == phase:
            self.learn.model.load_state_dict(weights)
            self.learn.opt.load_state_dict(state["opt"])
            self.skip_to = int(state["epoch"]) + 1  # as fastai's own fit(start_epoch=...) does
            self._pending = None
        else:
            self._pending = None
            return
        self._skipper = _SkipDoneEpochs(self.skip_to)
        self.learn.add_cb(self._skipper)

    def after_epoch(self) -> None:
        self._last_steps = self.train_iter
        epoch = self.epoch_offset + self.epoch
        if self.epoch < self.skip_to:
            return
        names = list(self.recorder.metric_names[1:])  # without "epoch"; values omit "time"
        metrics = scalar_metrics(dict(zip(names, self.recorder.values[-1], strict=False)))
        self.engine.observe(metrics, epoch=epoch, step=self.step_offset + self.train_iter)
        if not self.engine.due(epoch):
            return
        decision = self.engine.check(metrics)
        state = None
        if self.engine.keeps_points:
            opt = self.learn.opt.state_dict()  # plain containers: it loads with weights_only
            plain = {
                "state": [{k: _plain(v) for k, v in x.items()} for x in opt["state"]],
                "hypers": [{k: _plain(v) for k, v in h.items()} for h in opt["hypers"]],
            }
            state = {"opt": plain, "epoch": self.epoch, "phase": self.phase}
        learn, init_args = self.learn, self.init_args

        def snapshot() -> Any:
            recipe = fastai_recipe(learn, init_args)
            parts = model_parts(learn.model, state, "fastai", init_args, recipe, self._host)
            parts.info.update(format="fastai", learner=learner_settings(learn))
            return parts

        self.engine.commit(
            decision,
            epoch=epoch,
            step=self.step_offset + self.train_iter,
            metrics=metrics,
            snapshot=snapshot,
        )

    def after_fit(self) -> None:
        self.run = True
        if self._skipper is not None:
            self.learn.remove_cb(self._skipper)
            self._skipper = None
        self.engine.end()


ShelfCheckpoint.__init__.__signature__ = signature_with(  # type: ignore[attr-defined]
    ShelfCheckpoint.__init__, default_monitor=DEFAULT_MONITOR
)
