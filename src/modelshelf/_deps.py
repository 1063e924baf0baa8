"""Optional dependencies: import one, or say which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._errors import MissingDependencyError

# module names to try, in order -> (package to name, extra)
_KNOWN: dict[str, tuple[tuple[str, ...], str, str]] = {
    "lightning": (("lightning.pytorch", "pytorch_lightning"), "pytorch-lightning", "lightning"),
    "keras": (("keras",), "keras", "keras"),
    "fastai": (("fastai",), "fastai", "fastai"),
    "torch": (("torch",), "torch", "lightning"),
    "safetensors": (("safetensors",), "safetensors", "lightning"),
    "s3fs": (("s3fs",), "s3fs", "s3"),
    "gcsfs": (("gcsfs",), "gcsfs", "gcs"),
    "typer": (("typer",), "typer", "ui"),
    "rich": (("rich",), "rich", "ui"),
}


def require(name: str, purpose: str | None = None) -> ModuleType:
    """Import the optional dependency ``name`` or raise MissingDependencyError."""
    modules, package, extra = _KNOWN[name]
    for module in modules:
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or module.split(".")[0] != exc.name.split(".")[0]:
                raise  # the framework is there but one of *its* imports failed: show that
    raise MissingDependencyError(package, extra, purpose or f"modelshelf's {name} support")
