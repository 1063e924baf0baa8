"""A shelf for the web UI's tests: what the demo and the pipeline example make, plus
predictions tables, an image, and hostile text (a shelf is untrusted input)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import modelshelf as ms

REPO = Path(__file__).resolve().parents[1]
HOSTILE = '<script>alert("name")</script><img src=x onerror=alert(1)>'


def png(width: int = 24, height: int = 16) -> bytes:
    """A small valid RGB PNG (a gradient), written without an imaging library."""
    raw = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x * 10 % 256, y * 15 % 256, 128))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def run_example(script: str, root: Path) -> None:
    env = {**os.environ, "MODELSHELF_ROOT": str(root), "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [sys.executable, str(REPO / "examples" / script)],
        cwd=REPO / "examples",
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=900,
    )


def predictions(root: Path, tmp: Path) -> None:
    """Two versions of a predictions table: v1 changes three rows and adds one."""
    shelf = ms.Shelf(str(root))
    rows = [(i, i % 10, i % 10) for i in range(40)]
    for version, changed in ((0, {}), (1, {3: 7, 11: 2, 25: 0})):
        folder = tmp / f"pred{version}"
        folder.mkdir()
        lines = ["id,label,prediction"]
        lines += [f"{i},{label},{changed.get(i, pred)}" for i, label, pred in rows]
        if version == 1:
            lines.append("40,0,0")
        (folder / "predictions.csv").write_text("\n".join(lines) + "\n")
        (folder / "confusion.png").write_bytes(png(24 + version, 16))
        (folder / "notes.md").write_text(f"# Eval {version}\n\nAccuracy on the test split.\n")
        with shelf.run(job_type="evaluate", config={"threshold": 0.5 + version / 10}) as run:
            run.use("digits-cnn:best")
            run.log({"accuracy": 0.9 + version / 100})
            run.log_artifact(
                str(folder), name="cnn-predictions", type="predictions",
                metadata={"accuracy": 0.9 + version / 100, "split": "test"},
            )  # fmt: skip


def hostile(root: Path, tmp: Path) -> None:
    """An artifact whose description, metadata and file name are HTML and script."""
    shelf = ms.Shelf(str(root))
    folder = tmp / "hostile"
    folder.mkdir()
    (folder / "<img src=x onerror=alert(3)>.txt").write_text(HOSTILE)
    shelf.log_artifact(
        str(folder), name="notes", type="dataset", description=HOSTILE,
        metadata={HOSTILE: HOSTILE, "accuracy": 0.5},
    )  # fmt: skip


def build(root: Path, tmp: Path) -> None:
    run_example("pipeline.py", root)
    run_example("demo.py", root)
    predictions(root, tmp)
    hostile(root, tmp)
