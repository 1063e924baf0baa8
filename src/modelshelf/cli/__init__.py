"""The ``modelshelf`` command. Its commands live in ``commands``; this module only checks that
the ``ui`` extra (Typer and Rich) is installed."""

from __future__ import annotations

import sys

from .._deps import require
from .._errors import MissingDependencyError


def main() -> None:
    """The console entry point: ``modelshelf ...``."""
    try:
        require("typer", "The modelshelf command line")
        require("rich", "The modelshelf command line")
    except MissingDependencyError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(1)
    from .commands import run

    sys.exit(run())


if __name__ == "__main__":
    main()
