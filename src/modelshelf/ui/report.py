"""``modelshelf report``: one self-contained HTML file about an artifact or a version.

It holds the version table, the metric charts, the lineage graph and a comparison, with the
styles, scripts and data inlined, so it opens from disk, offline, and can be mailed or attached
to a pull request. Like the UI's pages, it shows shelf data as escaped text only.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from .._shelf import Shelf
from . import views
from .app import environment, package_dir

SCRIPTS = (
    "vendor/uPlot-1.6.32.iife.min.js",
    "vendor/cytoscape-3.35.0.min.js",
    "vendor/cytoscape-dagre-4.0.1.min.js",
    "app.js",
)
STYLES = ("vendor/uPlot-1.6.32.min.css", "app.css")


def _inline_script(text: str) -> str:
    # Inside <script>, "</script" would end the element and "<!--" changes how the HTML parser
    # reads on; written this way they mean the same to JavaScript.
    return text.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def report_data(shelf: Shelf, target: str) -> dict[str, Any]:
    """What the report shows: ``target`` is a version (``name:v3``, ``name:best``) or a name
    (its latest version). The comparison is with the version before it, when there is one."""
    focus = shelf.get(target)
    art = views.artifact(shelf, focus.name)
    numbers = [r["version"] for r in reversed(art["rows"])]
    index = numbers.index(focus.version)
    compare = None
    if index > 0:
        compare = views.compare(shelf, [f"{focus.name}:v{numbers[index - 1]}", focus.ref])
    return {
        "artifact": art,
        "v": views.version(shelf, focus.ref),
        "graph": views.lineage(shelf, focus.ref, "both", 3),
        "c": compare,
    }


def write_report(shelf: Shelf, target: str, output: str | os.PathLike[str]) -> Path:
    """Write the report on ``target`` (a version or a name) to ``output``; returns its path."""
    data = report_data(shelf, target)
    static = package_dir("static")
    html = (
        environment()
        .get_template("report.html")
        .render(
            shelf_url=shelf.url,
            generated=_dt.datetime.now(_dt.timezone.utc),
            styles="\n".join((static / s).read_text(encoding="utf-8") for s in STYLES),
            scripts=[_inline_script((static / s).read_text(encoding="utf-8")) for s in SCRIPTS],
            **data,
        )
    )
    path = Path(output)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
