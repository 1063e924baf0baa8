"""The distribution, installed as users install it: the wheel built from the sdist, into a
fresh venv, with one extra at a time, by the very install cell the Colab notebooks run."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from test_examples import printed

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
SOURCE = PYPROJECT["project"]["urls"]["Repository"]
#: What the notebooks' install cells install from until the package is published.
SOURCE_AT_TAG = f"git+{SOURCE}@v{VERSION}"
COLAB = REPO / "examples" / "colab"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, and the wheel built from it (``build`` builds the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation",
         "--outdir", str(out), str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    (sdist,) = out.glob("modelshelf-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    assert f"modelshelf-{VERSION}/integrations/keras.py" in members
    assert f"modelshelf-{VERSION}/src/modelshelf/py.typed" in members
    (built,) = out.glob("modelshelf-*.whl")
    return built


def fresh_venv(where: Path) -> Path:
    """A new venv with nothing but pip; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    return where / "bin" / "python"


def pip_install(python: Path, *requirements: str) -> None:
    """``pip install`` as a user runs it (this machine's pip configuration: its local indexes
    and the wheels on its disk). No bytecode compiling: it only costs time here."""
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-compile", *requirements],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, _pip_failure(proc.stderr)


def _pip_failure(stderr: str) -> str:
    """What pip said when it failed, without its warnings about this machine's local indexes
    (one for each package they lack, which would push the error itself out of sight)."""
    said = [ln for ln in stderr.splitlines() if "is ignored: it is neither a file" not in ln]
    return "\n".join(said)[-4000:]


def install_cell(notebook: str) -> list[str]:
    """The requirements the notebook's install cell passes to ``%pip install``."""
    nb = json.loads((COLAB / f"{notebook}.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    (line,) = [ln for ln in "".join(cell["source"]).splitlines() if ln.startswith("%pip")]
    words = shlex.split(line)
    assert words[:2] == ["%pip", "install"], line
    return [w for w in words[2:] if w != "-q"]


def run_in(exe: Path, *args: str, cwd: Path, timeout: float = 600) -> str:
    """Run a program of the venv (from ``cwd``, so nothing from the checkout is importable but
    a script's own folder, examples/); its stdout."""
    proc = subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=os.environ.copy(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout


def test_notebooks_install_from_the_source_repository_at_the_release_tag() -> None:
    for notebook in sorted(p.stem for p in COLAB.glob("*.ipynb")):
        requirements = install_cell(notebook)
        source = [r for r in requirements if r.startswith("modelshelf[")]
        assert len(source) == 1 and source[0].endswith(f" @ {SOURCE_AT_TAG}"), requirements
        text = (COLAB / f"{notebook}.ipynb").read_text()
        extras = source[0].split(" @ ")[0]
        assert f'pip install -q \\"{extras}\\"' in text  # the one comment: once published
        badge = f"colab.research.google.com/github/{SOURCE.removeprefix('https://github.com/')}"
        assert f"{badge}/blob/main/examples/colab/{notebook}.ipynb" in text


#: notebook -> (the quick start script it mirrors, the artifact that script trains)
QUICKSTARTS = {
    "lightning_quickstart": ("lightning_quickstart", "digits-cnn"),
    "keras_quickstart": ("keras_quickstart", "digits-keras"),
    "fastai_quickstart": ("fastai_quickstart", "digits-mlp"),
}

#: The notebooks whose venvs get Colab's preinstalled PyTorch.
USES_TORCH = {"lightning_quickstart", "fastai_quickstart"}
#: What a Colab runtime has before any install cell runs, for the notebooks that use it.
PREINSTALLED = ("torch", "torchvision")


def _preinstalled(where: Path) -> Path:
    """The folder that plays Colab's preinstalled PyTorch: torch and torchvision at the test
    venv's releases (their wheels are on this disk: nothing is downloaded), installed once and
    put on the path of each PyTorch notebook's venv. Two copies would take another 5 GB."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in PREINSTALLED]
    # ``pip --target``: what a venv's own pip would install, into a plain folder.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-compile",
         "--target", str(where), *pins],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, _pip_failure(proc.stderr)
    return where


def _venv_for(
    notebook: str, wheel: Path, where: Path, torch: Future[Path] | None
) -> tuple[Path, str]:
    """A fresh venv where the notebook's install cell ran, its source URL swapped for the
    wheel; and what importing modelshelf.integrations.keras said there, for the Keras one.
    ``torch``: the preinstalled PyTorch to put on its path first, as Colab has it."""
    python = fresh_venv(where)
    if torch is not None:
        (site,) = where.glob("lib/python*/site-packages")
        (site / "colab-preinstalled.pth").write_text(f"{torch.result()}\n")
    requirements = [r.replace(SOURCE_AT_TAG, wheel.as_uri()) for r in install_cell(notebook)]
    pip_install(python, *requirements)
    said = ""
    if notebook == "keras_quickstart":
        probe = "import modelshelf.integrations.keras"
        said = subprocess.run([str(python), "-c", probe], capture_output=True, text=True).stderr
        # Colab has TensorFlow already; this venv gets the CPU build of the release the test
        # venv has (its wheel is on this disk: nothing is downloaded).
        pip_install(python, f"tensorflow-cpu=={importlib.metadata.version('tensorflow-cpu')}")
    return python, said


@pytest.fixture(scope="module")
def notebook_venvs(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[Path, str]]]:
    """One fresh venv per quick-start notebook, installed side by side (pip mostly waits on
    the disk), and removed after the module: they are GBs, and pytest keeps the temporary
    folders of its last three runs."""
    root = tmp_path_factory.mktemp("venvs")
    try:
        with ThreadPoolExecutor(max_workers=len(QUICKSTARTS) + 1) as pool:
            torch = pool.submit(_preinstalled, root / "colab")
            futures = {
                nb: pool.submit(
                    _venv_for, nb, wheel, root / nb, torch if nb in USES_TORCH else None
                )
                for nb in QUICKSTARTS
            }
            venvs = {nb: future.result() for nb, future in futures.items()}
        yield venvs
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", sorted(QUICKSTARTS))
def test_the_notebook_install_cell_gives_what_its_quick_start_needs(
    notebook: str, notebook_venvs: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    """The framework's quick start runs in the venv the install cell made, and load_model
    gives back, in a fresh process, what it logged."""
    python, said = notebook_venvs[notebook]
    if notebook == "keras_quickstart":  # Keras alone has no backend: the error says which extra
        assert 'pip install "modelshelf[tensorflow]"' in said, said[-2000:]
    if notebook == "lightning_quickstart":  # LightningCLI's own requirements came too
        usage = run_in(python, str(REPO / "tests" / "lightning_cli.py"), "--help", cwd=tmp_path)
        assert "fit" in usage
    script, name = QUICKSTARTS[notebook]
    where = run_in(python, "-c", "import modelshelf; print(modelshelf.__file__)", cwd=tmp_path)
    assert str(python.parent.parent) in where  # the installed wheel, not the checkout
    trained = run_in(python, str(REPO / "examples" / f"{script}.py"), cwd=tmp_path)
    loaded = run_in(python, str(REPO / "examples" / "inference.py"), f"{name}:best", cwd=tmp_path)
    assert abs(printed(loaded) - printed(trained)) < 1e-9 and printed(trained) > 0.5


@pytest.mark.slow
def test_the_s3_and_ui_extras_alone(wheel: Path, tmp_path: Path, s3_endpoint: str) -> None:
    from conftest import new_bucket

    python = fresh_venv(tmp_path / "s3")
    pip_install(python, f"modelshelf[s3] @ {wheel.as_uri()}")
    url = f"s3://{new_bucket(s3_endpoint)}/shelf"
    out = run_in(python, "-c", CORE_WITHOUT_FRAMEWORKS, url, cwd=tmp_path)
    assert out.split() == ["data:v0", "1", "ok"]

    python = fresh_venv(tmp_path / "ui")
    pip_install(python, f"modelshelf[ui] @ {wheel.as_uri()}")
    command = python.parent / "modelshelf"
    (tmp_path / "m.bin").write_bytes(b"weights")
    shelf = str(tmp_path / "ui-shelf")
    logged = [str(tmp_path / "m.bin"), "--name", "m", "--type", "model", "--alias", "best"]
    run_in(command, "--shelf", shelf, "log", *logged, cwd=tmp_path)
    listed = run_in(command, "--shelf", shelf, "ls", "m", "--json", cwd=tmp_path)
    assert [(v["ref"], v["aliases"]) for v in json.loads(listed)] == [("m:v0", ["best", "latest"])]
    # The web UI's templates and vendored scripts are in the wheel: the report inlines them.
    run_in(command, "--shelf", shelf, "report", "m", "-o", str(tmp_path / "r.html"), cwd=tmp_path)
    report = (tmp_path / "r.html").read_text()
    assert "cytoscape" in report and 'data-ref="m:v0"' in report


@pytest.mark.slow
def test_wheel_installs_core_and_integrations_in_a_clean_venv(wheel: Path, tmp_path: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "modelshelf/py.typed" in names
    assert {
        "modelshelf/integrations/__init__.py",
        "modelshelf/integrations/lightning.py",
        "modelshelf/integrations/keras.py",
        "modelshelf/integrations/fastai.py",
    } <= set(names)
    assert not any(n.startswith(("integrations/", "src/", "tests/")) for n in names)

    python = fresh_venv(tmp_path / "venv")
    pip_install(python, str(wheel))
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
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    src = REPO / "src" / "modelshelf"
    found = {"modelshelf"} | {
        "modelshelf." + ".".join(p.parent.relative_to(src).parts)
        for p in src.rglob("__init__.py")
        if p.parent != src
    }
    assert found | {"modelshelf.integrations"} == listed
