"""log_model / load_model with real frameworks: reloaded in fresh processes, exactly."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import modelshelf as ms  # noqa: E402
from conftest import make_url  # noqa: E402
from zoo import MLP, DigitsClassifier, TiedLM  # noqa: E402

TESTS = Path(__file__).resolve().parent

LOAD_TORCH = r"""
import json, os, sys
import torch
import modelshelf as ms
import zoo  # the user's code that defines the model classes, as their script imports it
assert not os.path.exists(os.environ["MODELSHELF_CACHE"]), "the cache must start empty"
model = ms.load_model(sys.argv[2], shelf=sys.argv[1])
torch.manual_seed(0)
x = torch.rand(4, 64)
print(json.dumps({"cls": type(model).__name__, "training": model.training,
                  "out": model(x).tolist()}))
"""


def fresh(code: str, *args: str, env: dict[str, str] | None = None, tmp: Path) -> str:
    """Run ``code`` in a new interpreter with an empty cache; return its last stdout line."""
    full_env = {**os.environ, **(env or {})}
    full_env["MODELSHELF_CACHE"] = str(tmp / f"fresh-cache-{os.urandom(4).hex()}")
    full_env["PYTHONPATH"] = os.pathsep.join([str(TESTS), full_env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def expected(model: torch.nn.Module) -> list[list[float]]:
    torch.manual_seed(0)
    x = torch.rand(4, 64)
    with torch.no_grad():
        return model.eval()(x).tolist()  # type: ignore[no-any-return]


@pytest.mark.slow  # a fresh interpreter imports torch
def test_plain_module_rebuilt_from_init_args_in_a_fresh_process(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    model = MLP(64, 32)
    v = shelf.log_model(model, "mlp", init_args={"d_in": 64, "hidden": 32}, aliases=["best"])
    info = v.metadata["model"]
    assert info["format"] == "torch" and info["framework"] == "torch"
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) == 2410
    assert info["dtypes"] == ["float32"] and info["recipe"]["class"] == "zoo:MLP"
    assert (
        info["libraries"]["torch"] == torch.__version__.split("+")[0] or info["libraries"]["torch"]
    )
    assert v.type == "model" and sorted(v.files) == ["model.safetensors"]
    got = json.loads(fresh(LOAD_TORCH, str(tmp_path / "shelf"), "mlp:best", tmp=tmp_path))
    assert got["cls"] == "MLP" and got["training"] is False
    assert got["out"] == expected(model)  # exactly: float32 on CPU


@pytest.mark.slow  # a fresh interpreter imports torch
def test_lightning_module_rebuilt_without_a_model(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    shelf = ms.Shelf(tmp_path / "shelf")
    model = DigitsClassifier(hidden=24, lr=0.05)
    v = shelf.log_model(model, aliases=["prod"], config={"epochs": 3})
    assert v.name == "digits-classifier"
    info = v.metadata["model"]
    assert info["framework"] == "lightning" and info["input_shape"] == [1, 64]
    assert info["recipe"]["init_args"] == {"hidden": 24, "lr": 0.05}
    assert v.metadata["config"] == {"epochs": 3}
    got = json.loads(
        fresh(LOAD_TORCH, str(tmp_path / "shelf"), "digits-classifier:prod", tmp=tmp_path)
    )
    assert got["cls"] == "DigitsClassifier"
    assert got["out"] == expected(model)


def test_skeleton_loading_is_strict(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    model = MLP(64, 32)
    shelf.log_model(model, "mlp")  # no init_args: only loadable into a skeleton
    with pytest.raises(ms.UnsupportedModelError, match=r"needs d_in, hidden.*model=MyModel"):
        shelf.load_model("mlp")
    skeleton = MLP(64, 32)
    loaded = ms.load_model("mlp", shelf=shelf, model=skeleton)
    assert loaded is skeleton and expected(loaded) == expected(model)
    with pytest.raises(ms.UnsupportedModelError, match=r"does not fit MLP: weights .*model=\.\.\."):
        shelf.load_model("mlp", model=MLP(64, 16))


def test_tied_weights_stay_tied(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    model = TiedLM()
    v = shelf.log_model(model)
    assert v.metadata["model"]["tied"] == {"head.weight": "embed.weight"}
    from safetensors.torch import load_file

    stored = load_file(str(v.path("model.safetensors")))  # a valid safetensors file, stored once
    assert "head.weight" not in stored and "embed.weight" in stored
    loaded = shelf.load_model(v.ref)
    assert loaded.head.weight is loaded.embed.weight
    ids = torch.randint(0, 50, (2, 7))
    assert torch.equal(loaded(ids), model.eval()(ids))


@pytest.mark.slow  # a fresh interpreter imports torch
def test_logged_to_s3_loaded_in_another_process(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = make_url("s3", tmp_path, request)
    model = MLP(64, 8)
    ms.Shelf(url).log_model(model, "mlp", init_args={"d_in": 64, "hidden": 8})
    got = json.loads(fresh(LOAD_TORCH, url, "mlp", tmp=tmp_path))
    assert got["out"] == expected(model)


def test_pickles_are_refused_by_content_not_by_name(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    model = MLP(64, 8)
    torch.save(model.state_dict(), tmp_path / "weights.bin")  # a torch zip, renamed .bin
    shelf.log_model(tmp_path / "weights.bin", "renamed")
    with pytest.raises(
        ms.UnsafeLoadError, match=r"weights.bin.*data.pkl.*allow_pickle=True"
    ) as exc:
        shelf.load_model("renamed", model=MLP(64, 8))
    assert exc.value.path is not None and exc.value.path.endswith("weights.bin")
    loaded = shelf.load_model("renamed", model=MLP(64, 8), allow_pickle=True)
    assert expected(loaded) == expected(model)

    with open(tmp_path / "blob.dat", "wb") as f:  # a raw pickle stream with a harmless payload
        pickle.dump({"not": "a model"}, f, protocol=2)
    shelf.log_model(tmp_path / "blob.dat", "raw")
    with pytest.raises(ms.UnsafeLoadError, match="raw pickle stream"):
        shelf.load_model("raw")


def test_file_versions_that_cannot_be_rebuilt_say_what_they_hold(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x08\x07onnx")
    (folder / "vocab.txt").write_text("a\nb\n")
    shelf.log_model(folder, "onnx-export")
    assert shelf.get("onnx-export").metadata["model"] == {"format": "files"}
    with pytest.raises(ms.UnsupportedModelError, match=r"model.onnx, vocab.txt.*download\(\)"):
        shelf.load_model("onnx-export")


def test_bad_inputs(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    with pytest.raises(ms.UnsupportedModelError, match=r"torch\.nn\.Module.*keras\.Model"):
        shelf.log_model(object(), "x")
    with pytest.raises(ms.InvalidArgumentError, match=r"Unknown option.*export"):
        shelf.log_model(MLP(64, 8), "x", export=True)
    with pytest.raises(ms.InvalidMetadataError, match="init_args"):
        shelf.log_model(MLP(64, 8), "x", init_args={"d_in": object()})
    assert shelf.artifacts() == []


def test_run_log_model_records_lineage(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    with shelf.run(config={"lr": 0.1}) as run:
        v = run.log_model(MLP(64, 8), "mlp", init_args={"d_in": 64, "hidden": 8})
    assert v.logged_by() == run and run.outputs() == [v]
    assert "model.parameters" not in ms.Shelf(shelf.url).compare("mlp")[0]["metrics"]


def test_module_with_non_persistent_buffer_is_built_for_real(tmp_path: Path) -> None:
    from zoo import WithBuffer

    shelf = ms.Shelf(tmp_path / "shelf")
    model = WithBuffer()
    shelf.log_model(model, "buffered")
    loaded = shelf.load_model("buffered")
    assert not loaded.scale.is_meta
    assert torch.equal(loaded.scale, torch.arange(1.0, 5.0))
    assert expected(loaded) == expected(model)
