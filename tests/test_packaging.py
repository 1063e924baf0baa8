"""The distribution: a regular wheel maps integrations/ to modelshelf.integrations."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_core_and_integrations_in_a_clean_venv(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("modelshelf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "modelshelf/py.typed" in names
    assert {
        "modelshelf/integrations/__init__.py",
        "modelshelf/integrations/lightning.py",
        "modelshelf/integrations/keras.py",
        "modelshelf/integrations/fastai.py",
    } <= set(names)
    assert not any(n.startswith(("integrations/", "src/", "tests/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True
    )
    # Run from an empty folder so nothing from the checkout can be imported by accident.
    probe = (
        "import modelshelf, modelshelf.integrations, sys\n"
        "assert 'site-packages' in modelshelf.__file__, modelshelf.__file__\n"
        "assert 'site-packages' in modelshelf.integrations.__file__\n"
        "try:\n"
        "    import modelshelf.integrations.lightning\n"
        "except modelshelf.MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [str(python), "-c", probe], cwd=tmp_path, check=True, capture_output=True, text=True
    )
    assert 'pip install "modelshelf[lightning]"' in out.stdout

    # The core alone lists, shows, downloads and verifies, and imports no ML framework.
    core = subprocess.run(
        [str(python), "-c", CORE_WITHOUT_FRAMEWORKS, str(tmp_path / "shelf")],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert core.returncode == 0, core.stderr[-3000:]
    assert core.stdout.split() == ["data:v0", "1", "ok"]


CORE_WITHOUT_FRAMEWORKS = r"""
import pathlib, sys
import modelshelf as ms
folder = pathlib.Path("data"); folder.mkdir()
(folder / "x.csv").write_text("a,b\n1,2\n")
shelf = ms.Shelf(sys.argv[1])
v = shelf.log_artifact(folder, name="data", type="dataset")
assert shelf.artifacts() == ["data"] and shelf.get("data").files["x.csv"].size == 8
assert (v.download() / "x.csv").read_text() == "a,b\n1,2\n"
v.verify()
frameworks = {"torch", "tensorflow", "keras", "lightning", "pytorch_lightning", "fastai", "jax"}
loaded = sorted(frameworks & set(sys.modules))
assert not loaded, loaded
print(v.ref, len(shelf.versions("data")), "ok")
"""


def test_editable_install_maps_integrations_too() -> None:
    import modelshelf.integrations

    assert Path(modelshelf.integrations.__file__).parent == REPO / "integrations"


def test_the_wheel_lists_every_package_of_the_source_tree() -> None:
    """A subpackage missing from pyproject's list would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    src = REPO / "src" / "modelshelf"
    found = {"modelshelf"} | {
        "modelshelf." + ".".join(p.parent.relative_to(src).parts)
        for p in src.rglob("__init__.py")
        if p.parent != src
    }
    assert found | {"modelshelf.integrations"} == listed
