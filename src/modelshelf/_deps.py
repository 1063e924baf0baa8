"""Optional dependencies: import one, or say which extra installs it."""

from __future__ import annotations

import importlib
import importlib.util
import sys
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
    "starlette": (("starlette",), "starlette", "ui"),
    "uvicorn": (("uvicorn",), "uvicorn", "ui"),
    "jinja2": (("jinja2",), "jinja2", "ui"),
}


def _before_tensorflow() -> None:
    """Load Triton (installed with torch) before TensorFlow, if neither is loaded yet.

    TensorFlow >= 2.20 wheels load their library with RTLD_GLOBAL, so a Triton (>= 3.7) loaded
    after it binds to TensorFlow's copy of LLVM and the interpreter dies with SIGSEGV: loading a
    Keras model and then importing Lightning (which imports Triton through torch._dynamo) would
    crash the process (tensorflow/tensorflow#124205). The other order is safe.
    """
    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    if importlib.util.find_spec("triton") is None:
        return
    try:
        importlib.import_module("triton")
    except Exception:  # a broken Triton is torch's problem, not a reason to refuse Keras
        return


def require(name: str, purpose: str | None = None) -> ModuleType:
    """Import the optional dependency ``name`` or raise MissingDependencyError."""
    modules, package, extra = _KNOWN[name]
    if name == "keras":
        _before_tensorflow()
    for module in modules:
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            if name == "keras" and missing == "tensorflow":  # Keras 3 without its backend
                raise MissingDependencyError(
                    "tensorflow", "tensorflow", "Keras (its default backend, TensorFlow)"
                ) from None
            if exc.name is None or module.split(".")[0] != missing:
                raise  # the framework is there but one of *its* imports failed: show that
    raise MissingDependencyError(package, extra, purpose or f"modelshelf's {name} support")
