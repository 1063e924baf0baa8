"""``log_model`` and ``load_model`` (SPEC §4): torch, Lightning, Keras 3, fastai, or files.

A model version's metadata holds, under ``"model"``, what is needed to use it again:
``format`` (``torch`` | ``keras`` | ``fastai`` | ``files``), the framework and library versions,
the parameter count, dtypes, shapes when known, and the rebuild ``recipe``. No framework is
imported here until a model of it is logged or loaded, and loading never needs a framework
other than the one the version was saved with.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._artifact import LocalFile
from ._cleanup import gc_head
from ._deps import require
from ._errors import InvalidReferenceError, UnsupportedModelError
from ._layout import clean_metadata
from ._manifest import FileEntry, Manifest, blob_key
from ._pickles import pickle_kind, refuse
from ._refs import validate_alias, validate_name

logger = logging.getLogger("modelshelf")

if TYPE_CHECKING:
    from ._shelf import Shelf
    from ._version import ArtifactVersion

_OPTIONS = {
    "torch": {"init_args"},
    "keras": set(),
    "fastai": {"init_args", "export"},
    "files": set(),
}
KERAS_FILE = "model.keras"
LEARNER_FILE = "learner.pkl"


def _versions(*names: str) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def framework_of(model: Any) -> str:
    """``torch``, ``keras``, ``fastai`` or ``files``, told without importing any framework."""
    if isinstance(model, (str, os.PathLike)):
        return "files"
    mro = type(model).__mro__
    if any(c.__name__ == "Learner" and c.__module__.startswith("fastai") for c in mro):
        return "fastai"
    if any(c.__name__ == "Model" and c.__module__.startswith("keras") for c in mro):
        return "keras"
    if any(c.__name__ == "Module" and c.__module__ == "torch.nn.modules.module" for c in mro):
        return "torch"
    raise UnsupportedModelError(
        f"log_model does not know how to store a {type(model).__module__}."
        f"{type(model).__qualname__}."
        " It takes a torch.nn.Module (LightningModule included), a keras.Model, a fastai Learner,"
        " or the path of a file or folder."
    )


def _default_name(model: Any, framework: str) -> str:
    if framework == "files":
        base = Path(model).name.split(".")[0]
    else:
        target = model.model if framework == "fastai" else model
        base = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", type(target).__name__).lower()
    try:
        return validate_name(base)
    except InvalidReferenceError:
        raise InvalidReferenceError(f"Cannot name the model after {base!r}; pass name=.") from None


class _Blob:
    """One file of a model version: bytes made on the fly, or a local file."""

    def __init__(self, stream: Callable[[], Iterator[Any]] | None = None, path: Path | None = None):
        self.stream, self.path = stream, path

    def put(self, shelf: Shelf) -> tuple[str, int]:
        if self.stream is not None:
            return shelf._storage.put_stream(self.stream, blob_key)
        assert self.path is not None
        return shelf._put_blob(LocalFile(self.path))


def _torch_parts(
    model: Any, init_args: dict[str, Any] | None, *, to_host: bool = False
) -> tuple[dict[str, _Blob], dict[str, Any]]:
    """The safetensors weights of a torch model and what describes it.

    ``to_host``: copy the tensors to CPU memory now (a checkpoint snapshot taken while
    training goes on); otherwise they are read from the model when the file is written.
    """
    from . import _torch_format as tf

    tensors, aliases = tf.split_shared(model.state_dict())
    if to_host:
        tensors = {k: t.detach().to("cpu", copy=True) for k, t in tensors.items()}
    info = {
        "format": "torch",
        "framework": "lightning" if tf.is_lightning(model) else "torch",
        "weights": tf.WEIGHTS,
        "tied": aliases,
        "recipe": tf.recipe(model, init_args),
        **tf.describe(model, tensors),
    }
    return {tf.WEIGHTS: _Blob(stream=lambda: tf.safetensors_stream(tensors))}, info


def _keras_parts(model: Any, tmp: Path) -> tuple[dict[str, _Blob], dict[str, Any]]:
    keras = require("keras", "Logging a Keras model")
    path = tmp / KERAS_FILE
    model.save(path)
    info: dict[str, Any] = {
        "format": "keras",
        "framework": "keras",
        "file": KERAS_FILE,
        "backend": keras.backend.backend(),
        "class": f"{type(model).__module__}:{type(model).__qualname__}",
    }
    if model.built:
        info["parameters"] = int(model.count_params())
        info["dtypes"] = sorted({str(w.dtype) for w in model.weights})
    for attr, key in (("input_shape", "input_shape"), ("output_shape", "output_shape")):
        try:
            shape = getattr(model, attr)
            info[key] = clean_metadata({"s": shape})["s"]
        except Exception:  # a subclassed or unbuilt model has none
            continue
    return {KERAS_FILE: _Blob(path=path)}, info


def _fastai_parts(
    learn: Any, init_args: dict[str, Any] | None, export: bool, tmp: Path
) -> tuple[dict[str, _Blob], dict[str, Any]]:
    blobs, info = _torch_parts(learn.model, init_args)
    info.update(format="fastai", framework="fastai", learner=learner_settings(learn))
    if export:
        path = tmp / LEARNER_FILE
        try:
            learn.export(path)  # fastai pickles the whole Learner
        except Exception as exc:
            raise UnsupportedModelError(
                f"fastai could not export this Learner ({type(exc).__name__}: {exc}); log it "
                "without export=True to store its model's weights and settings."
            ) from exc
        blobs[LEARNER_FILE] = _Blob(path=path)
        info["learner_file"] = LEARNER_FILE
    return blobs, info


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


def log_model(
    shelf: Shelf,
    model: Any,
    name: str | None,
    *,
    aliases: Any,
    metadata: dict[str, Any] | None,
    config: dict[str, Any] | None,
    run: Any,
    options: dict[str, Any],
) -> ArtifactVersion:
    framework = framework_of(model)
    unknown = set(options) - _OPTIONS[framework]
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[framework])) or "none"
        raise InvalidReferenceError(
            f"Unknown option(s) {', '.join(sorted(unknown))} for a {framework} model; "
            f"allowed: {allowed}."
        )
    name = validate_name(name) if name is not None else _default_name(model, framework)
    aliases = [validate_alias(a) for a in aliases if a != "latest"]
    user_meta = clean_metadata(metadata)
    cfg = clean_metadata(config, "config") if config is not None else None
    if framework == "files":
        meta = {**user_meta, "model": {"format": "files"}}
        if cfg is not None:
            meta["config"] = cfg
        return shelf.log_artifact(model, name, "model", aliases=aliases, metadata=meta, run=run)

    with tempfile.TemporaryDirectory(prefix="modelshelf-") as tmp_name:
        tmp = Path(tmp_name)
        if framework == "torch":
            blobs, info = _torch_parts(model, options.get("init_args"))
        elif framework == "keras":
            blobs, info = _keras_parts(model, tmp)
        else:
            blobs, info = _fastai_parts(
                model, options.get("init_args"), bool(options.get("export")), tmp
            )
        meta = {**user_meta, "config": cfg} if cfg is not None else user_meta
        return log_parts(shelf, name, blobs, info, meta, aliases, run)


def log_parts(
    shelf: Shelf,
    name: str,
    blobs: dict[str, _Blob],
    info: dict[str, Any],
    metadata: dict[str, Any],
    aliases: list[str],
    run: Any,
) -> ArtifactVersion:
    """Store a model's files and commit them as the next version of ``name``."""
    info["libraries"] = _versions(
        "torch", "pytorch-lightning", "lightning", "keras", "tensorflow", "tensorflow-cpu",
        "jax", "fastai", "safetensors", "numpy",
    )  # fmt: skip
    info["python"] = ".".join(map(str, sys.version_info[:3]))
    recipe = info.get("recipe", {})
    if recipe.get("init_args", {}) is None:
        logger.warning(
            "%s: load_model will need model=... to load this version (%s).",
            name, recipe.get("why_not"),
        )  # fmt: skip
    meta = {**metadata, "model": clean_metadata(info, "model info")}
    shelf._info(create=True)
    shelf._claim_name(name, "model")
    gc_seen = gc_head(shelf._storage)
    files: dict[str, FileEntry] = {}
    by_hex: dict[str, _Blob] = {}
    for rel, blob in blobs.items():
        hexdigest, size = blob.put(shelf)
        files[rel] = FileEntry(size=size, digest=f"sha256:{hexdigest}")
        by_hex[hexdigest] = blob

    def restore(hexdigest: str) -> None:
        by_hex[hexdigest].put(shelf)

    return shelf._commit(
        name, "model", Manifest(files), {"description": None, "metadata": meta, "tags": []},
        aliases=aliases, run=run, gc_seen=gc_seen, restore=restore,
    )  # fmt: skip


def load_model(shelf: Shelf, ref: str, *, model: Any, map_location: Any, allow_pickle: bool) -> Any:
    version = shelf.get(ref)
    info = version.metadata.get("model")
    fmt = info.get("format") if isinstance(info, dict) else None
    if fmt in ("torch", "fastai"):
        assert isinstance(info, dict)
        if fmt == "fastai" and allow_pickle and model is None and info.get("learner_file"):
            require("fastai", "Loading a fastai Learner")
            from fastai.learner import load_learner

            return load_learner(version.path(info["learner_file"]), cpu=str(map_location) == "cpu")
        require("torch", "Loading a PyTorch model")
        from . import _torch_format as tf

        weights, tied = version.path(info["weights"]), info.get("tied", {})
        if model is not None:
            return tf.load_weights(weights, tied, model, map_location, version.ref)
        try:
            return tf.rebuild_and_load(info["recipe"], weights, tied, map_location, version.ref)
        except UnsupportedModelError as exc:
            if fmt == "fastai" and info.get("learner_file"):
                raise UnsupportedModelError(
                    f"{exc} Or, if you trust who logged it, load fastai's pickled export of the "
                    "whole Learner with allow_pickle=True."
                ) from None
            raise
    if fmt == "keras":
        assert isinstance(info, dict)
        if info.get("weights_only") and model is None:
            raise UnsupportedModelError(
                f"{version.ref} holds Keras weights only (saved with save_weights_only=True): "
                f"build the model and pass it, load_model({version.ref!r}, model=model)."
            )
        return _load_keras(version.path(info["file"]), model, allow_pickle)
    return _load_files(version, model, map_location, allow_pickle)


def _load_keras(path: Path, model: Any, allow_pickle: bool) -> Any:
    keras = require("keras", "Loading a Keras model")
    if model is not None:
        model.load_weights(path)
        return model
    # safe_mode refuses to deserialize Python code (Lambda layers): the same trust question.
    return keras.saving.load_model(path, safe_mode=not allow_pickle)


def _load_files(version: ArtifactVersion, model: Any, map_location: Any, allow_pickle: bool) -> Any:
    files = sorted(version.files)
    listing = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
    cannot = UnsupportedModelError(
        f"{version.ref} holds {listing}: files logged as they are, not a model modelshelf can "
        f"rebuild. Fetch them with ms.get({version.ref!r}).download() and load them yourself"
        + (", or pass model= to load the weights into." if model is None else ".")
    )
    if len(files) != 1:
        raise cannot
    (only,) = files
    path = version.path(only)
    kind = pickle_kind(path)
    if kind is not None:
        if not allow_pickle:
            raise refuse(path, f"{version.ref}/{only}", kind)
        require("torch", "Loading a pickled PyTorch file")
        import pickle

        import torch

        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        if model is not None and isinstance(obj, dict):
            model.load_state_dict(obj, strict=True)
            return model.eval()
        return obj
    if only.endswith(".keras"):
        return _load_keras(path, model, allow_pickle)
    if only.endswith(".safetensors") and model is not None:
        require("torch", "Loading safetensors weights")
        from . import _torch_format as tf

        return tf.load_weights(path, {}, model, map_location, version.ref)
    raise cannot
