"""PyTorch and Lightning models: weights as safetensors, rebuilt from a recorded recipe."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.download import chunks_from_shelf
from .._core.sources import StreamedFile
from .._deps import require
from .._errors import UnsupportedModelError
from .base import Codec, Files, Loading, mro_has

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion


def torch_parts(
    model: Any,
    init_args: dict[str, Any] | None,
    *,
    to_host: bool | Callable[[str, Any], Any] = False,
    recipe: dict[str, Any] | None = None,
) -> tuple[dict[str, StreamedFile], dict[str, Any]]:
    """The safetensors weights of a torch model and what describes it.

    ``to_host``: copy the tensors to CPU memory now (a checkpoint snapshot taken while
    training goes on), with ``to_host(name, tensor)`` when it is a function; otherwise they
    are read from the model when the file is written.
    ``recipe``: how to rebuild it, when not from its class and ``init_args`` (fastai's
    factories).
    """
    from . import torch_format as tf

    tensors, aliases = tf.split_shared(model.state_dict())
    if to_host:
        copy = to_host if callable(to_host) else lambda _k, t: t.detach().to("cpu", copy=True)
        tensors = {k: copy(k, t) for k, t in tensors.items()}
    info = {
        "format": "torch",
        "framework": "lightning" if tf.is_lightning(model) else "torch",
        "weights": tf.WEIGHTS,
        "tied": aliases,
        "recipe": recipe if recipe is not None else tf.recipe(model, init_args),
        **tf.describe(model, tensors),
    }
    weights = StreamedFile(
        lambda: tf.safetensors_stream(tensors), pieces=lambda: tf.safetensors_pieces(tensors)
    )
    return {tf.WEIGHTS: weights}, info


def load_torch(version: ArtifactVersion, info: dict[str, Any], how: Loading) -> Any:
    """Weights into ``model``, or the model rebuilt from its recipe (UnsupportedModelError
    saying what to pass when it cannot be)."""
    require("torch", "Loading a PyTorch model")
    from . import torch_format as tf

    tied = info.get("tied", {})
    # From a local shelf, a file stored in chunks is read straight from its blobs (no copy of
    # it in the cache); else the cached file.
    chunks = chunks_from_shelf(version, info["weights"], map_file=tf.map_private)
    state = tf.state_from_chunks(chunks) if chunks else None
    weights = state if state is not None else version.path(info["weights"])
    if how.model is not None:
        return tf.load_weights(
            weights, tied, how.model, how.map_location, version.ref, allow_pickle=how.allow_pickle
        )
    recipe = info.get("recipe")
    if not isinstance(recipe, dict):
        raise UnsupportedModelError(
            f"{version.ref} records no rebuild recipe; pass model=MyModel(...) to load into."
        )
    return tf.rebuild_and_load(
        recipe, weights, tied, how.map_location, version.ref,
        trust_recipe=how.trust_recipe, allow_pickle=how.allow_pickle,
    )  # fmt: skip


class TorchCodec(Codec):
    """A ``torch.nn.Module`` (``LightningModule`` included)."""

    format = "torch"
    options = frozenset({"init_args"})

    def claims(self, model: Any) -> bool:
        return any(
            c.__name__ == "Module" and c.__module__ == "torch.nn.modules.module"
            for c in type(model).__mro__
        ) and not mro_has(model, "Learner", "fastai")

    def parts(
        self, repo: Repository, model: Any, name: str, options: dict[str, Any], tmp: Path
    ) -> tuple[Files, dict[str, Any]]:
        return torch_parts(model, options.get("init_args"))

    def load(self, version: ArtifactVersion, info: dict[str, Any], how: Loading) -> Any:
        return load_torch(version, info, how)
