"""Keras 3 (TensorFlow and torch backends) and fastai: log, then load in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_models import fresh

KERAS_LOG = r"""
import json, sys
import numpy as np
import keras
import modelshelf as ms
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(10)])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
x = np.random.default_rng(0).random((4, 64)).astype("float32")
v = ms.Shelf(sys.argv[1]).log_model(model, "kmodel", aliases=["best"])
print(json.dumps({"out": model.predict(x, verbose=0).tolist(), "info": v.metadata["model"]}))
"""

KERAS_LOAD = r"""
import json, sys
import numpy as np
import modelshelf as ms
model = ms.load_model("kmodel:best", shelf=sys.argv[1])
x = np.random.default_rng(0).random((4, 64)).astype("float32")
import keras
import lightning.pytorch  # after TensorFlow: must not crash (tensorflow/tensorflow#124205)
print(json.dumps({"cls": type(model).__name__, "is_keras": isinstance(model, keras.Model),
                  "backend": keras.backend.backend(), "out": model.predict(x, verbose=0).tolist()}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_keras_model_round_trip(backend: str, tmp_path: Path) -> None:
    pytest.importorskip("keras")
    shelf = str(tmp_path / "shelf")
    env = {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    logged = json.loads(fresh(KERAS_LOG, shelf, env=env, tmp=tmp_path))
    info = logged["info"]
    assert info["format"] == "keras" and info["backend"] == backend
    assert info["parameters"] == 64 * 16 + 16 + 16 * 10 + 10
    assert info["input_shape"] == [None, 64] and info["output_shape"] == [None, 10]
    loaded = json.loads(fresh(KERAS_LOAD, shelf, env=env, tmp=tmp_path))
    assert loaded["is_keras"] and loaded["backend"] == backend
    assert loaded["out"] == logged["out"]


FASTAI_LOAD = r"""
import json, sys
import torch
import modelshelf as ms
from zoo import digits  # the user's code, which defines the model's class
model = ms.load_model("digits-fastai:best", shelf=sys.argv[1])
x, _ = digits(8)
with torch.no_grad():
    print(json.dumps({"cls": type(model).__name__, "out": model(x).tolist()}))
"""

FASTAI_LEARNER = r"""
import json, sys
import torch
import modelshelf as ms
model = ms.load_model("tabular", shelf=sys.argv[1])  # rebuilt from tabular_learner's recipe
x_cont = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    out = model(torch.zeros((len(x_cont), 0), dtype=torch.long), x_cont).tolist()
learn = ms.load_model("tabular", shelf=sys.argv[1], allow_pickle=True)
print(json.dumps({"cls": type(learn).__name__, "model": type(model).__name__, "out": out}))
"""


@pytest.mark.slow
def test_fastai_learner_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("fastai")
    import torch
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.metrics import accuracy
    from torch import nn
    from torch.utils.data import TensorDataset

    import modelshelf as ms
    from zoo import MLP, digits

    torch.manual_seed(0)
    x, y = digits(320)
    dls = DataLoaders.from_dsets(
        TensorDataset(x[:256], y[:256]), TensorDataset(x[256:], y[256:]), bs=32
    )
    learn = Learner(dls, MLP(64, 16), loss_func=nn.CrossEntropyLoss(), metrics=accuracy)
    learn.fit(1, 0.05)
    shelf = ms.Shelf(tmp_path / "shelf")
    v = shelf.log_model(
        learn, "digits-fastai", init_args={"d_in": 64, "hidden": 16}, aliases=["best"]
    )
    settings = v.metadata["model"]["learner"]
    assert settings["loss_func"] == "CrossEntropyLoss" and settings["metrics"] == ["accuracy"]
    assert settings["opt_func"] == "Adam" and settings["model_class"] == "zoo:MLP"
    assert v.metadata["model"]["format"] == "fastai" and "learner.pkl" not in v.files

    got = json.loads(fresh(FASTAI_LOAD, str(tmp_path / "shelf"), tmp=tmp_path))
    with torch.no_grad():
        want = learn.model.eval()(digits(8)[0]).tolist()
    assert got["cls"] == "MLP" and got["out"] == want


@pytest.mark.slow
def test_fastai_tabular_learner_rebuilds_and_its_export_needs_allow_pickle(
    tmp_path: Path,
) -> None:
    pytest.importorskip("fastai")
    import pandas as pd
    import torch
    from fastai.tabular.all import CategoryBlock, Normalize, TabularDataLoaders, tabular_learner
    from sklearn.datasets import load_digits

    import modelshelf as ms

    features, labels = load_digits(return_X_y=True)
    cols = [f"p{i}" for i in range(64)]
    df = pd.DataFrame(features[:300], columns=cols).assign(label=labels[:300])
    dls = TabularDataLoaders.from_df(
        df, y_names="label", cont_names=cols, procs=[Normalize], y_block=CategoryBlock(),
        valid_idx=list(range(240, 300)), bs=32,
    )  # fmt: skip
    learn = tabular_learner(dls, layers=[16, 8], y_range=(0, 9))
    learn.fit(1, 1e-2)
    v = ms.Shelf(tmp_path / "shelf").log_model(learn, "tabular", export=True)
    assert sorted(v.files) == ["learner.pkl", "model.safetensors"]
    assert v.metadata["model"]["recipe"]["builder"] == "fastai.tabular_learner"
    x_cont = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    got = json.loads(
        fresh(FASTAI_LEARNER, str(tmp_path / "shelf"), json.dumps(x_cont.tolist()), tmp=tmp_path)
    )
    with torch.no_grad():
        want = learn.model.eval()(torch.zeros((4, 0), dtype=torch.long), x_cont).tolist()
    assert got["model"] == "TabularModel" and got["out"] == want
    assert got["cls"] == "TabularLearner"
