"""Configuration read from the environment, in one place so tests can point it elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

ENV_ROOT = "MODELSHELF_ROOT"
ENV_CACHE = "MODELSHELF_CACHE"

#: Version of the on-shelf format this code writes; see docs/format.md.
FORMAT_VERSION = 1

#: Bytes read or written per step when streaming a file.
CHUNK_SIZE = 8 * 1024 * 1024


def default_root() -> str:
    """Return the default shelf root: ``$MODELSHELF_ROOT`` or ``~/.modelshelf``."""
    return os.environ.get(ENV_ROOT) or str(Path.home() / ".modelshelf")


def cache_dir() -> Path:
    """Return the local download cache: ``$MODELSHELF_CACHE`` or ``~/.cache/modelshelf``."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "modelshelf"
