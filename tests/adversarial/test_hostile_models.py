"""A hostile shelf cannot run code through ``load_model``: recipes (checked with marker files),
pickles posing as weights, Keras archives with Python code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import modelshelf as ms  # noqa: E402
from zoo import MLP  # noqa: E402


@pytest.fixture
def logged(tmp_path: Path) -> ms.ArtifactVersion:
    shelf = ms.Shelf(tmp_path / "shelf")
    return shelf.log_model(MLP(4, 3), "net", init_args={"d_in": 4, "hidden": 3})


def tamper(version: ms.ArtifactVersion, cls: str, init_args: Any) -> None:
    """What someone who controls the bucket can write: any recipe."""
    info = dict(version.metadata["model"])
    info["recipe"] = {**info["recipe"], "class": cls, "init_args": init_args}
    version.update_metadata({"model": info})


def hostile(marker: Path) -> list[tuple[str, Any]]:
    return [
        ("builtins:open", {"file": str(marker), "mode": "w"}),
        ("os:system", {"command": f"touch {marker}"}),
        ("subprocess:run", {"args": ["touch", str(marker)]}),
        ("pathlib:Path", {}),  # a class, but no Module: never called
        ("os.path:join", {"a": str(marker)}),
        ("zoo:torch.nn.Module.__init__", {}),  # an attribute path that is not a class
        ("builtins:__import__", {"name": "antigravity"}),
        ("../../evil:Net", {}),
    ]


@pytest.mark.parametrize("trust", [False, True])
def test_nothing_but_a_module_subclass_is_ever_called(
    logged: ms.ArtifactVersion, tmp_path: Path, trust: bool
) -> None:
    marker = tmp_path / "marker"
    for cls, init_args in hostile(marker):
        tamper(logged, cls, init_args)
        with pytest.raises(ms.UnsupportedModelError, match="model=") as exc:
            logged.shelf.load_model("net", trust_recipe=trust)
        assert len(str(exc.value)) < 400
        assert not marker.exists(), cls
    assert "antigravity" not in sys.modules


def test_a_module_is_imported_only_with_trust_recipe(
    logged: ms.ArtifactVersion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "evil_nets.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc1 = torch.nn.Linear(4, 3)\n"
        "        self.fc2 = torch.nn.Linear(3, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evil_nets", raising=False)
    tamper(logged, "evil_nets:Net", {})
    with pytest.raises(ms.UnsupportedModelError, match="trust_recipe=True") as exc:
        logged.shelf.load_model("net")
    assert "import evil_nets" in str(exc.value)
    assert not marker.exists() and "evil_nets" not in sys.modules
    # Opting in is the caller's decision: then the module is imported, and runs.
    try:
        model = logged.shelf.load_model("net", trust_recipe=True)
    except ms.UnsupportedModelError:
        model = None  # the weights need not fit the class; importing is what is tested
    assert marker.exists() and "evil_nets" in sys.modules
    del model
    sys.modules.pop("evil_nets", None)


def test_a_class_the_caller_imported_is_rebuilt(logged: ms.ArtifactVersion) -> None:
    assert "zoo" in sys.modules  # this test module imported it, as a user's script does
    model = logged.shelf.load_model("net")
    assert isinstance(model, MLP)


def test_torch_weights_that_are_a_pickle_ask_for_allow_pickle(
    logged: ms.ArtifactVersion, tmp_path: Path
) -> None:
    """A version that says it holds safetensors weights, whose bytes are a pickle (with
    digests that match: whoever wrote the shelf wrote those too)."""
    torch.save(MLP(4, 3).state_dict(), tmp_path / "model.safetensors")
    info = logged.metadata["model"]
    logged.shelf.log_artifact(
        tmp_path / "model.safetensors", name="tampered", type="model", metadata={"model": info}
    )
    with pytest.raises(ms.UnsafeLoadError, match=r"tampered:v0/model.safetensors.*allow_pickle"):
        logged.shelf.load_model("tampered")
    assert isinstance(logged.shelf.load_model("tampered", allow_pickle=True), MLP)


def test_a_pickle_logged_as_safetensors_asks_for_allow_pickle(tmp_path: Path) -> None:
    """Bytes that hash right but are a pickle under a .safetensors name (logged that way)."""
    shelf = ms.Shelf(tmp_path / "shelf")
    torch.save(MLP(4, 3).state_dict(), tmp_path / "model.safetensors")
    shelf.log_artifact(tmp_path / "model.safetensors", name="lie", type="model")
    with pytest.raises(ms.UnsafeLoadError, match=r"lie:v0/model.safetensors.*allow_pickle=True"):
        shelf.load_model("lie", model=MLP(4, 3))
    loaded = shelf.load_model("lie", model=MLP(4, 3), allow_pickle=True)
    assert isinstance(loaded, MLP)


def test_garbage_weights_are_an_integrity_error(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    shelf.log_artifact(tmp_path / "model.safetensors", name="junk", type="model")
    with pytest.raises(ms.IntegrityError, match="not a readable safetensors file"):
        shelf.load_model("junk", model=MLP(4, 3))


# -- fastai factory recipes ----------------------------------------------------------------------
@pytest.fixture
def tabular(tmp_path: Path) -> ms.ArtifactVersion:
    """A model that tabular_learner built, logged with its factory recipe."""
    pytest.importorskip("fastai")
    from fastai.tabular.model import TabularModel

    class Learn:  # what the codec reads of a Learner: its model, settings it may lack
        model = TabularModel([(3, 2)], 4, 2, [8], y_range=(0.0, 1.0))
        loss_func = opt_func = lr = wd = moms = None
        metrics: list[Any] = []

    from modelshelf._models.fastai import fastai_recipe

    recipe = fastai_recipe(Learn(), None)
    assert recipe is not None and recipe["builder"] == "fastai.tabular_learner"
    shelf = ms.Shelf(tmp_path / "shelf")
    return shelf.log_model(Learn.model, "tab", init_args={})  # then given the factory recipe


def set_recipe(version: ms.ArtifactVersion, recipe: dict[str, Any]) -> None:
    info = dict(version.metadata["model"])
    info["recipe"] = recipe
    version.update_metadata({"model": info})


def test_fastai_recipes_call_only_model_zoos(tabular: ms.ArtifactVersion, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    vision = {"builder": "fastai.vision_learner", "args": {"n_out": 2, "n_in": 1, "lin_ftrs": [],
              "ps": [0.5], "concat_pool": True, "y_range": None}}  # fmt: skip
    for arch in ["os:system", "subprocess:run", "builtins:exec", "zoo:MLP", "../x:y", 7]:
        set_recipe(tabular, {**vision, "arch": arch})
        with pytest.raises(ms.UnsupportedModelError, match="model=") as exc:
            tabular.shelf.load_model("tab")
        assert len(str(exc.value)) < 300
    assert not marker.exists()
    set_recipe(tabular, {**vision, "arch": "torchvision.models.resnet:ResNet.__init__"})
    with pytest.raises(ms.UnsupportedModelError):  # a zoo, but not what it built: no fit
        tabular.shelf.load_model("tab")


@pytest.mark.parametrize(
    "args",
    [
        {"emb_szs": [[3, 2]], "n_cont": -1, "out_sz": 2, "layers": [8]},
        {"emb_szs": [[3, 2, 1]], "n_cont": 4, "out_sz": 2, "layers": [8]},
        {"emb_szs": "x", "n_cont": 4, "out_sz": 2, "layers": [8]},
        {"emb_szs": [[3, 2]], "n_cont": 4, "out_sz": 2, "layers": [10**9]},
        {"emb_szs": [[3, 2]], "n_cont": 4, "out_sz": True, "layers": [8]},
        {"emb_szs": [[3, 2]], "n_cont": 4, "out_sz": 2, "layers": [8], "y_range": [0, 1, 2]},
    ],
)
def test_odd_fastai_recipe_arguments_are_refused(
    tabular: ms.ArtifactVersion, args: dict[str, Any]
) -> None:
    set_recipe(tabular, {"builder": "fastai.tabular_learner", "args": args})
    with pytest.raises(ms.UnsupportedModelError, match="model="):
        tabular.shelf.load_model("tab")


def test_a_tabular_recipe_rebuilds_the_model(tabular: ms.ArtifactVersion) -> None:
    from fastai.tabular.model import TabularModel

    from modelshelf._models.fastai_recipes import learner_recipe

    class Learn:
        model = TabularModel([(3, 2)], 4, 2, [8], y_range=(0.0, 1.0))

    recipe = learner_recipe(Learn())
    assert recipe is not None
    set_recipe(tabular, recipe)
    model = tabular.shelf.load_model("tab")
    assert type(model).__name__ == "TabularModel"
