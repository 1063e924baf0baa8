"""The Colab notebooks run top to bottom on this project's kernel (nbclient), minus the cells
tagged ``colab`` (the pip install and the Google Drive mount), and leave what they say."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import modelshelf as ms
from test_examples import printed

COLAB = Path(__file__).resolve().parents[1] / "examples" / "colab"
NOTEBOOKS = sorted(p.stem for p in COLAB.glob("*.ipynb"))
COLAB_ONLY = ("%pip", "!pip", "google.colab", "drive.mount")


def load(name: str) -> Any:
    """The notebook as an nbformat node."""
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(COLAB / f"{name}.ipynb", as_version=4)


def execute(name: str, tmp_path: Path) -> str:
    """Run the notebook (skipping ``colab`` cells); return the text of every output."""
    nb = load(name)
    nb.cells = [c for c in nb.cells if "colab" not in c.metadata.get("tags", [])]
    return run_notebook(nb, tmp_path)


def execute_cells(cells: list[str], tmp_path: Path) -> str:
    """Run a notebook made of these code cells in a new kernel; the text of every output."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    return run_notebook(nb, tmp_path)


def run_notebook(nb: Any, tmp_path: Path) -> str:
    nbclient = pytest.importorskip("nbclient")
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the traceback, if a cell fails
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts.append(
                output.get("text", "") or str(output.get("data", {}).get("text/plain", ""))
            )
    return "\n".join(texts)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_written_for_colab(name: str) -> None:
    nb = load(name)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0]
    assert "colab" in first.metadata.get("tags", []) and "pip install" in first.source
    assert "colab.research.google.com/github/" in nb.cells[0].source  # the Open-in-Colab badge
    assert any("drive.mount" in c.source for c in code)
    for cell in code:  # whatever only works on Colab is tagged, so the tests can skip it
        if any(marker in cell.source for marker in COLAB_ONLY):
            assert "colab" in cell.metadata.get("tags", []), cell.source
        assert not cell.get("outputs"), "notebooks are committed without outputs"


def test_expected_notebooks_exist() -> None:
    assert NOTEBOOKS == [
        "fastai_quickstart",
        "inference",
        "keras_quickstart",
        "lightning_quickstart",
    ]


@pytest.mark.slow
def test_quickstart_notebooks_then_inference_notebook(tmp_path: Path) -> None:
    shelf = ms.shelf()  # the kernel inherits $MODELSHELF_ROOT from the test's environment

    out = execute("lightning_quickstart", tmp_path)
    assert printed(out, "test accuracy") > 0.5
    cnn = shelf.get("digits-cnn:best")
    assert cnn.version == shelf.versions("digits-cnn")[-1].version  # improved only: best = latest
    assert cnn.metadata["model"]["recipe"]["class"] == "__main__:DigitsCNN"

    # A class defined in a notebook cell, asked for in a kernel that has not defined it.
    out = execute_cells(
        [
            "import modelshelf as ms\n"
            "try:\n"
            "    ms.load_model('digits-cnn:best')\n"
            "except ms.UnsupportedModelError as exc:\n"
            "    print(exc)\n"
        ],
        tmp_path,
    )
    assert "defined in a notebook" in out and "model=DigitsCNN(...)" in out

    out = execute("keras_quickstart", tmp_path)
    assert printed(out, "test accuracy") > 0.5
    assert shelf.get("digits-keras:best").metadata["model"]["format"] == "keras"

    out = execute("fastai_quickstart", tmp_path)
    assert printed(out, "test accuracy") > 0.5
    assert 1 <= len(shelf.versions("digits-mlp")) <= 3  # keep_last=3

    out = execute("inference", tmp_path)  # a new kernel: nothing in memory from training
    assert printed(out, "keras test accuracy") > 0.5
    assert printed(out, "torch test accuracy") > 0.5
    assert shelf.get("digits-cnn:production").version == cnn.version
    assert f"production -> v{cnn.version}" in out


def test_a_notebook_shows_tqdm_progress_for_large_transfers(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    small = tmp_path / "small.bin"
    small.write_bytes(b"tiny")
    out = execute_cells(
        [
            "import modelshelf as ms\n"
            f"v = ms.log_artifact({str(big)!r}, name='big', type='model')\n"
            f"ms.log_artifact({str(small)!r}, name='small', type='model')\n"
            f"v.download({str(tmp_path / 'out')!r})\n"
            "print('done')"
        ],
        tmp_path,
    )
    assert "done" in out
    # tqdm.auto: a widget where ipywidgets is installed, else tqdm's text bar on stderr.
    assert "log big" in out and "download big:v0" in out
    assert "log small" not in out  # under 4 MiB: no bar
