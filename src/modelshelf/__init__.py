"""modelshelf: version machine-learning models on any fsspec filesystem, with no server.

Example:
    >>> import modelshelf as ms
    >>> v = ms.log_artifact("data/", name="digits", type="dataset", aliases=["train"])
    >>> ms.get("digits:train").download()
"""

from __future__ import annotations

from . import cache
from ._api import get, load_model, log_artifact, log_model, run, shelf
from ._core.artifact import Artifact
from ._errors import ConflictError
from ._errors import IntegrityError
from ._errors import InvalidArgumentError
from ._errors import InvalidMetadataError
from ._errors import InvalidReferenceError
from ._errors import MissingDependencyError
from ._errors import ModelshelfError
from ._errors import NotFoundError
from ._errors import UnsafeLoadError
from ._errors import UnsupportedModelError
from ._core.gc import GcReport
from ._core.labels import AliasEvent
from ._core.version import ArtifactVersion
from ._core.version import FileInfo
from ._features.diff import Diff
from ._features.lineage import Lineage
from ._features.runs import Run
from ._features.tables import PredictionComparison
from ._shelf import Shelf

__version__ = "0.1.0"

__all__ = [
    "AliasEvent",
    "Artifact",
    "ArtifactVersion",
    "ConflictError",
    "Diff",
    "FileInfo",
    "GcReport",
    "IntegrityError",
    "InvalidArgumentError",
    "InvalidMetadataError",
    "InvalidReferenceError",
    "Lineage",
    "MissingDependencyError",
    "ModelshelfError",
    "NotFoundError",
    "PredictionComparison",
    "Run",
    "Shelf",
    "UnsafeLoadError",
    "UnsupportedModelError",
    "__version__",
    "cache",
    "get",
    "load_model",
    "log_artifact",
    "log_model",
    "run",
    "shelf",
]
