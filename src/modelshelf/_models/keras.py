"""Keras 3 models: the native ``.keras`` archive (or weights only, from the callback)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.sources import LocalFile
from .._deps import require
from .._errors import UnsafeLoadError, UnsupportedModelError
from .._format.records import clean_metadata
from .base import Codec, Files, Loading, mro_has

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion

KERAS_FILE = "model.keras"
WEIGHTS_FILE = "model.weights.h5"


def keras_parts(model: Any, tmp: Path) -> tuple[dict[str, LocalFile], dict[str, Any]]:
    """Save ``model``'s ``.keras`` archive under ``tmp``; the file and what describes it."""
    path = tmp / KERAS_FILE
    model.save(path)
    return {KERAS_FILE: LocalFile(path)}, keras_info(model)


def keras_info(model: Any) -> dict[str, Any]:
    """What describes ``model``'s ``.keras`` archive in a version's metadata."""
    keras = require("keras", "Logging a Keras model")
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
    return info


def keras_weights_parts(model: Any, tmp: Path) -> tuple[dict[str, LocalFile], dict[str, Any]]:
    """Save only ``model``'s weights (``.weights.h5``) under ``tmp``."""
    model.save_weights(tmp / WEIGHTS_FILE)
    return {WEIGHTS_FILE: LocalFile(tmp / WEIGHTS_FILE)}, keras_weights_info()


def keras_weights_info() -> dict[str, Any]:
    """What describes a ``.weights.h5`` file in a version's metadata."""
    keras = require("keras", "Logging Keras weights")
    return {
        "format": "keras", "framework": "keras", "file": WEIGHTS_FILE,
        "weights_only": True, "backend": keras.backend.backend(),
    }  # fmt: skip


def load_keras(path: Path, model: Any, allow_pickle: bool, shown_as: str) -> Any:
    """Weights into ``model``, or the whole model from a ``.keras`` archive."""
    keras = require("keras", "Loading a Keras model")
    if model is not None:
        model.load_weights(path)
        return model
    # safe_mode refuses to deserialize Python code (Lambda layers): the same trust question.
    try:
        return keras.saving.load_model(path, safe_mode=not allow_pickle)
    except ValueError as exc:
        if allow_pickle or "safe_mode" not in str(exc):
            raise
        raise UnsafeLoadError(
            f"Refusing to load {shown_as!r}: the Keras archive holds Python code (a Lambda "
            "layer or a custom function), and deserializing it can run arbitrary code. Load it "
            "only if you trust who logged it, with load_model(..., allow_pickle=True).",
            path=str(path),
        ) from None


class KerasCodec(Codec):
    """A ``keras.Model``, under any backend."""

    format = "keras"

    def claims(self, model: Any) -> bool:
        return mro_has(model, "Model", "keras")

    def parts(
        self, repo: Repository, model: Any, name: str, options: dict[str, Any], tmp: Path
    ) -> tuple[Files, dict[str, Any]]:
        return keras_parts(model, tmp)

    def load(self, version: ArtifactVersion, info: dict[str, Any], how: Loading) -> Any:
        model, allow_pickle = how.model, how.allow_pickle
        if info.get("weights_only") and model is None:
            raise UnsupportedModelError(
                f"{version.ref} holds Keras weights only (saved with save_weights_only=True): "
                f"build the model and pass it, load_model({version.ref!r}, model=model)."
            )
        path = version.path(info["file"])
        return load_keras(path, model, allow_pickle, f"{version.ref}/{info['file']}")
