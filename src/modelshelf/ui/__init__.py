"""The web UI (``modelshelf ui``) and the static HTML report (``modelshelf report``).

Both need the ``ui`` extra (Starlette, uvicorn and Jinja2): ``pip install "modelshelf[ui]"``.
"""

from __future__ import annotations

from .report import write_report
from .server import serve

__all__ = ["serve", "write_report"]
