"""fastai Learners: the model's weights (as torch) plus the learner's settings, and optionally
fastai's pickled export of the whole Learner (loaded only with ``allow_pickle=True``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.sources import LocalFile
from .._deps import require
from .._errors import UnsupportedModelError
from .._format.records import clean_metadata
from .base import Codec, Files, Loading, mro_has
from .torch import load_torch, torch_parts

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion

LEARNER_FILE = "learner.pkl"


def _name_of(obj: Any) -> str | None:
    if obj is None:
        return None
    inner = getattr(obj, "func", obj)  # functools.partial, fastai's partial
    return str(getattr(inner, "__qualname__", None) or type(inner).__qualname__)


def learner_settings(learn: Any) -> dict[str, Any]:
    """A fastai Learner's settings, as plain data (what fastai stores for it)."""
    hypers = {}
    opt = getattr(learn, "opt", None)
    if opt is not None and getattr(opt, "hypers", None):
        hypers = {k: v for k, v in opt.hypers[-1].items() if isinstance(v, (int, float))}
    moms = getattr(learn, "moms", None)
    return clean_metadata(
        {
            "loss_func": _name_of(learn.loss_func),
            "opt_func": _name_of(learn.opt_func),
            "metrics": [getattr(m, "name", _name_of(m)) for m in learn.metrics],
            "lr": float(learn.lr) if isinstance(learn.lr, (int, float)) else None,
            "wd": learn.wd if isinstance(learn.wd, (int, float)) else None,
            "moms": list(moms) if moms is not None else None,
            "train_bn": bool(getattr(learn, "train_bn", True)),
            "model_class": f"{type(learn.model).__module__}:{type(learn.model).__qualname__}",
            "optimizer_hypers": hypers,
        },
        "learner settings",
    )


def fastai_recipe(learn: Any, init_args: dict[str, Any] | None) -> dict[str, Any] | None:
    """The recipe of a model built by ``vision_learner`` or ``tabular_learner``, unless
    ``init_args`` were given (they name the model's own class then)."""
    if init_args is not None:
        return None
    from .fastai_recipes import learner_recipe

    return learner_recipe(learn)


class FastaiCodec(Codec):
    """A fastai ``Learner``."""

    format = "fastai"
    options = frozenset({"init_args", "export"})

    def claims(self, model: Any) -> bool:
        return mro_has(model, "Learner", "fastai")

    def default_name(self, model: Any) -> str:
        return super().default_name(model.model)

    def parts(
        self, repo: Repository, model: Any, name: str, options: dict[str, Any], tmp: Path
    ) -> tuple[Files, dict[str, Any]]:
        blobs, info = torch_parts(
            model.model,
            options.get("init_args"),
            recipe=fastai_recipe(model, options.get("init_args")),
        )
        files: dict[str, Any] = dict(blobs)
        info.update(format="fastai", framework="fastai", learner=learner_settings(model))
        if options.get("export"):
            path = tmp / LEARNER_FILE
            try:
                model.export(path)  # fastai pickles the whole Learner
            except Exception as exc:
                raise UnsupportedModelError(
                    f"fastai could not export this Learner ({type(exc).__name__}: {exc}); log "
                    "it without export=True to store its model's weights and settings."
                ) from exc
            files[LEARNER_FILE] = LocalFile(path)
            info["learner_file"] = LEARNER_FILE
        return files, info

    def load(self, version: ArtifactVersion, info: dict[str, Any], how: Loading) -> Any:
        model, map_location, allow_pickle = how.model, how.map_location, how.allow_pickle
        if allow_pickle and model is None and info.get("learner_file"):
            require("fastai", "Loading a fastai Learner")
            from fastai.learner import load_learner

            return load_learner(version.path(info["learner_file"]), cpu=str(map_location) == "cpu")
        try:
            return load_torch(version, info, how)
        except UnsupportedModelError as exc:
            if info.get("learner_file"):
                raise UnsupportedModelError(
                    f"{exc} Or, if you trust who logged it, load fastai's pickled export of the "
                    "whole Learner with allow_pickle=True."
                ) from None
            raise
