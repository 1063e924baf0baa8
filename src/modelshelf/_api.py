"""Module-level helpers that act on the default shelf."""

from __future__ import annotations

import os
import threading
from typing import Any

from ._artifact import Artifact
from ._config import default_root
from ._runs import Run
from ._shelf import Shelf
from ._version import ArtifactVersion

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
