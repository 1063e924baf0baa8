"""Files or folders logged as a model, loaded when they are one recognisable model file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.artifact import as_artifact
from .._deps import require
from .._errors import UnsupportedModelError
from .base import Codec, Files, Loading
from .keras import load_keras
from .pickles import pickle_kind, refuse

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion


class FilesCodec(Codec):
    """The path of a file or folder; loads a single ``.pt``/``.keras``/``.safetensors`` file."""

    format = "files"
    records_environment = False

    def claims(self, model: Any) -> bool:
        return isinstance(model, (str, os.PathLike))

    def default_name(self, model: Any) -> str:
        return Path(model).name.split(".")[0]

    def parts(
        self, repo: Repository, model: Any, name: str, options: dict[str, Any], tmp: Path
    ) -> tuple[Files, dict[str, Any]]:
        artifact = as_artifact(model, name, "model", repo.type_of)
        return artifact.entries(), {"format": "files"}

    def load(self, version: ArtifactVersion, info: dict[str, Any], how: Loading) -> Any:
        model, map_location, allow_pickle = how.model, how.map_location, how.allow_pickle
        files = sorted(version.files)
        listing = ", ".join(files[:10]) + (
            f" and {len(files) - 10} more" if len(files) > 10 else ""
        )
        cannot = UnsupportedModelError(
            f"{version.ref} holds {listing}: files logged as they are, not a model modelshelf "
            f"can rebuild. Fetch them with ms.get({version.ref!r}).download() and load them "
            "yourself" + (", or pass model= to load the weights into." if model is None else ".")
        )
        if len(files) != 1:
            raise cannot
        (only,) = files
        path = version.path(only)
        kind = pickle_kind(path)
        if kind is not None:
            if not allow_pickle:
                raise refuse(path, f"{version.ref}/{only}", kind)
            return _load_pickled(path, model, map_location)
        if only.endswith(".keras"):
            return load_keras(path, model, allow_pickle, f"{version.ref}/{only}")
        if only.endswith(".safetensors") and model is not None:
            require("torch", "Loading safetensors weights")
            from . import torch_format as tf

            return tf.load_weights(
                path, {}, model, map_location, version.ref, allow_pickle=allow_pickle
            )
        raise cannot


def _load_pickled(path: Path, model: Any, map_location: Any) -> Any:
    """A ``torch.save`` file, trusted by the caller (``allow_pickle=True``)."""
    require("torch", "Loading a pickled PyTorch file")
    from .torch_format import load_trusted_pickle

    obj = load_trusted_pickle(path, map_location)
    if model is not None and isinstance(obj, dict):
        model.load_state_dict(obj, strict=True)
        return model.eval()
    return obj
