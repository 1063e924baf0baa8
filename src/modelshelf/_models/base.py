"""The codec interface and registry: how a model of one framework becomes a version, and back.

A codec knows one framework's models without importing the framework until it logs or loads
one. ``log_model`` asks each registered codec, in order, whether it ``claims`` the model;
``load_model`` picks the codec by the ``format`` a version's metadata records. A new framework
is one new module with one ``Codec`` subclass, registered in ``_models/__init__.py``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from .._errors import InvalidArgumentError, InvalidReferenceError, UnsupportedModelError
from .._format.manifest import FileEntry
from .._format.names import validate_name
from .._format.records import clean_metadata

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.sources import Source
    from .._core.version import ArtifactVersion

logger = logging.getLogger("modelshelf")

Files = Mapping[str, "Source | FileEntry"]
_LIBRARIES = (
    "torch", "pytorch-lightning", "lightning", "keras", "tensorflow", "tensorflow-cpu",
    "jax", "fastai", "safetensors", "numpy",
)  # fmt: skip


def mro_has(model: Any, class_name: str, module_prefix: str) -> bool:
    """Whether ``model``'s class derives from ``module_prefix...class_name``, told without
    importing that module."""
    return any(
        c.__name__ == class_name and c.__module__.startswith(module_prefix)
        for c in type(model).__mro__
    )


class Loading(NamedTuple):
    """What ``load_model`` was asked for, handed to the codec."""

    model: Any  # load the weights into this model instead of rebuilding one
    map_location: Any  # the torch device for tensors
    allow_pickle: bool  # whether unpickling (running code from a file) is allowed
    trust_recipe: bool = False  # whether a recorded class's module may be imported


class Codec:
    """How one framework's models are stored and loaded again."""

    #: the ``format`` recorded in a version's ``metadata["model"]``
    format: ClassVar[str]
    #: the keyword options ``log_model`` accepts for such a model
    options: ClassVar[frozenset[str]] = frozenset()
    #: whether versions record the installed ML libraries and Python version
    records_environment: ClassVar[bool] = True

    def claims(self, model: Any) -> bool:
        """Whether ``model`` is one of this codec's (without importing the framework)."""
        raise NotImplementedError

    def default_name(self, model: Any) -> str:
        """The artifact name to use when ``log_model`` is given none."""
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", type(model).__name__).lower()

    def parts(
        self, repo: Repository, model: Any, name: str, options: dict[str, Any], tmp: Path
    ) -> tuple[Files, dict[str, Any]]:
        """The files of the version (written under ``tmp`` if they must be files) and what
        describes the model (``metadata["model"]``)."""
        raise NotImplementedError

    def load(self, version: ArtifactVersion, info: dict[str, Any], how: Loading) -> Any:
        """The model a version of this format holds, ready for inference."""
        raise NotImplementedError


_REGISTRY: list[Codec] = []


def register(codec: Codec) -> Codec:
    """Add ``codec`` to the registry (asked in the order of registration)."""
    _REGISTRY.append(codec)
    return codec


def codec_for_model(model: Any) -> Codec:
    for codec in _REGISTRY:
        if codec.claims(model):
            return codec
    raise UnsupportedModelError(
        f"log_model does not know how to store a {type(model).__module__}."
        f"{type(model).__qualname__}."
        " It takes a torch.nn.Module (LightningModule included), a keras.Model, a fastai Learner,"
        " or the path of a file or folder."
    )


def codec_for_format(fmt: object) -> Codec | None:
    return next((c for c in _REGISTRY if c.format == fmt), None)


def model_name(codec: Codec, model: Any) -> str:
    base = codec.default_name(model)
    try:
        return validate_name(base)
    except InvalidReferenceError:
        raise InvalidReferenceError(f"Cannot name the model after {base!r}; pass name=.") from None


def check_options(codec: Codec, options: dict[str, Any]) -> None:
    unknown = set(options) - codec.options
    if unknown:
        allowed = ", ".join(sorted(codec.options)) or "none"
        raise InvalidArgumentError(
            f"Unknown option(s) {', '.join(sorted(unknown))} for a {codec.format} model; "
            f"allowed: {allowed}."
        )


def _versions(*names: str) -> dict[str, str]:
    return {name: v for name in names if (v := _version(name)) is not None}


@functools.cache
def _version(name: str) -> str | None:
    """The installed release of ``name`` (read once per process: it parses package metadata)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_WARNED: set[tuple[str, Any]] = set()


def log_parts(
    repo: Repository,
    name: str,
    files: Files,
    info: dict[str, Any],
    metadata: dict[str, Any],
    aliases: list[str],
    run_id: str | None,
    *,
    records_environment: bool = True,
) -> ArtifactVersion:
    """Commit a model's files as the next version of ``name``, ``info`` under
    ``metadata["model"]`` (the path of ``log_model`` and of the checkpoint writer)."""
    if records_environment:
        info["libraries"] = _versions(*_LIBRARIES)
        info["python"] = ".".join(map(str, sys.version_info[:3]))
    recipe = info.get("recipe", {})
    if recipe.get("init_args", {}) is None and (name, recipe.get("class")) not in _WARNED:
        _WARNED.add((name, recipe.get("class")))  # once per artifact, not at every checkpoint
        logger.warning(
            "%s: load_model will need model=... to load this version: %s.",
            name, recipe.get("why_not"),
        )  # fmt: skip
    meta = {**metadata, "model": clean_metadata(info, "model info")}
    fields: dict[str, Any] = {"description": None, "metadata": meta, "tags": []}
    return repo.commit(name, "model", files, fields, aliases=aliases, run_id=run_id)
