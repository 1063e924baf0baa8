"""Module-level helpers that act on the default shelf."""

from __future__ import annotations

import os
import threading
from typing import Any

from ._config import default_root
from ._core.artifact import Artifact
from ._core.version import ArtifactVersion
from ._features.runs import Run
from ._shelf import Shelf

_LOCK = threading.Lock()
_SHELVES: dict[str, Shelf] = {}


def shelf() -> Shelf:
    """Return the default shelf: ``$MODELSHELF_ROOT`` or ``~/.modelshelf``."""
    root = default_root()
    with _LOCK:
        if root not in _SHELVES:
            _SHELVES[root] = Shelf(root)
        return _SHELVES[root]


def get(ref: str) -> ArtifactVersion:
    """``shelf().get(ref)``: the version that ``ref`` names on the default shelf."""
    return shelf().get(ref)


def log_artifact(
    artifact_or_path: Artifact | str | os.PathLike[str],
    name: str | None = None,
    type: str | None = None,
    **kwargs: Any,
) -> ArtifactVersion:
    """``shelf().log_artifact(...)``: log to the default shelf."""
    return shelf().log_artifact(artifact_or_path, name, type, **kwargs)


def run(
    name: str | None = None,
    *,
    job_type: str = "train",
    config: dict[str, Any] | None = None,
    project: str | None = None,
) -> Run:
    """``shelf().run(...)``: start a run on the default shelf."""
    return shelf().run(name, job_type=job_type, config=config, project=project)


def log_model(model: Any, name: str | None = None, **kwargs: Any) -> ArtifactVersion:
    """``shelf().log_model(...)``: log a model to the default shelf."""
    return shelf().log_model(model, name, **kwargs)


def load_model(
    ref: str,
    *,
    shelf: Shelf | str | None = None,
    model: Any = None,
    map_location: Any = "cpu",
    allow_pickle: bool = False,
    trust_recipe: bool = False,
) -> Any:
    """Return the model ``ref`` names, ready for inference, on any machine.

    Args:
        ref: ``name``, ``name:vN`` or ``name:alias``.
        shelf: a Shelf or its URL (default: the default shelf).
        model: load the weights into this model (strictly) instead of rebuilding it.
        map_location: the torch device to load tensors onto.
        allow_pickle: allow unpickling (a fastai export, a ``torch.save`` file). Only for
            files from someone you trust: unpickling can run arbitrary code.
        trust_recipe: let the rebuild import the module its recorded class lives in. By
            default only classes whose module your code has imported are rebuilt (and only
            ``torch.nn.Module`` subclasses, ever): importing a module runs its code.

    Returns:
        A ``LightningModule`` / ``nn.Module`` in eval mode, a ``keras.Model``, or, for fastai,
        the rebuilt model (a ``Learner`` with ``allow_pickle=True`` and an export).

    Raises:
        UnsafeLoadError: a file is a pickle and ``allow_pickle`` is False.
        UnsupportedModelError: the version cannot be rebuilt; the message says what to do.
    """
    target = shelf if isinstance(shelf, Shelf) else (Shelf(shelf) if shelf else _shelf_default())
    return target.load_model(
        ref, model=model, map_location=map_location, allow_pickle=allow_pickle,
        trust_recipe=trust_recipe,
    )  # fmt: skip


_shelf_default = shelf
