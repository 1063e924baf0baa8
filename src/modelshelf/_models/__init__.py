"""Model codecs: ``log_model`` and ``load_model`` for torch/Lightning, Keras 3, fastai, files.

A model version's metadata holds, under ``"model"``, what is needed to use it again:
``format`` (a codec's name), the framework and library versions, the parameter count, dtypes,
shapes when known, and the rebuild ``recipe``. No framework is imported here until a model of
it is logged or loaded, and loading never needs a framework other than the one it was saved
with.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._format.names import LATEST, validate_alias, validate_name
from .._format.records import clean_metadata
from .base import (
    Loading,
    check_options,
    codec_for_format,
    codec_for_model,
    log_parts,
    model_name,
    register,
)
from .fastai import FastaiCodec
from .files import FilesCodec
from .keras import KerasCodec
from .torch import TorchCodec

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion

# Asked in this order: a fastai Learner is not a torch Module, but check it before torch's.
for _codec in (FilesCodec(), FastaiCodec(), KerasCodec(), TorchCodec()):
    register(_codec)

__all__ = ["load_model", "log_model", "log_parts"]


def log_model(
    repo: Repository,
    model: Any,
    name: str | None,
    *,
    aliases: Iterable[str],
    metadata: dict[str, Any] | None,
    config: dict[str, Any] | None,
    run_id: str | None,
    options: dict[str, Any],
) -> ArtifactVersion:
    """Store ``model`` as the next version of ``name`` (see ``Shelf.log_model``)."""
    codec = codec_for_model(model)
    check_options(codec, options)
    name = validate_name(name) if name is not None else model_name(codec, model)
    aliases = [validate_alias(a) for a in aliases if a != LATEST]
    meta = clean_metadata(metadata)
    if config is not None:
        meta["config"] = clean_metadata(config, "config")
    with tempfile.TemporaryDirectory(prefix="modelshelf-") as tmp:
        files, info = codec.parts(repo, model, name, options, Path(tmp))
        return log_parts(
            repo, name, files, info, meta, aliases, run_id,
            records_environment=codec.records_environment,
        )  # fmt: skip


def load_model(
    version: ArtifactVersion,
    *,
    model: Any,
    map_location: Any,
    allow_pickle: bool,
    trust_recipe: bool = False,
) -> Any:
    """The model ``version`` holds, ready for inference (see ``ms.load_model``)."""
    info = version.metadata.get("model")
    codec = codec_for_format(info.get("format") if isinstance(info, dict) else None)
    if codec is None:  # no model metadata: files logged with log_artifact
        codec, info = codec_for_format("files"), {"format": "files"}
    assert codec is not None and isinstance(info, dict)
    return codec.load(version, info, Loading(model, map_location, allow_pickle, trust_recipe))
