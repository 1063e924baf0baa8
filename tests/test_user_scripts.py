"""The callbacks in training scripts shaped like the ones users copy, run as scripts: fastai's
MNIST example (DataBlock, vision_learner, fit_one_cycle, fine_tune), keras.io's MNIST convnet
(validation_split), Lightning's classifier through LightningCLI. Each changes only the data
(digits) and adds the callback. Two trainings on one name, a kill between improvements and a
resume, and ``load_model("name:best")`` in a fresh process checked against what the training
printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import modelshelf as ms

SCRIPTS = Path(__file__).resolve().parent / "scripts"
pytestmark = pytest.mark.slow


def script(name: str, *args: str, tmp: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MODELSHELF_CACHE": str(tmp / "cache"),
        "MODELSHELF_ROOT": str(tmp / "shelf"),
        "PYTHONPATH": str(SCRIPTS),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        capture_output=True, text=True, env=env, timeout=600, cwd=tmp,
    )  # fmt: skip
    if ok:
        assert proc.returncode in (0, -9), proc.stderr[-4000:]
    return proc


def epochs_printed(proc: subprocess.CompletedProcess[str]) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def load_in_fresh_process(tmp: Path, code: str) -> float:
    """Run ``code`` (which prints one number) in a new interpreter; return the number."""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp,
        env={**os.environ, "MODELSHELF_CACHE": str(tmp / "cache2"), "PYTHONPATH": str(SCRIPTS),
             "MODELSHELF_ROOT": str(tmp / "shelf"), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return float(proc.stdout.strip().splitlines()[-1])


# -- fastai: DataBlock + vision_learner(resnet18, pretrained=False, n_in=1) -------------------
FASTAI_LOAD = """
import numpy as np, torch
from pathlib import Path
from PIL import Image
import modelshelf as ms
model = ms.load_model("digits-resnet:best")  # no model=, no import of the training script
assert type(model).__name__ == "Sequential"
files = sorted(Path({data!r}, "valid").glob("*/*.png"))
x = torch.tensor(np.stack([np.array(Image.open(f), dtype=np.float32) / 255 for f in files]))
y = torch.tensor([int(f.parent.name) for f in files])
with torch.no_grad():
    print(torch.nn.functional.cross_entropy(model(x[:, None]), y).item())
"""


def test_fastai_vision_learner_best_across_trainings_and_reload(tmp_path: Path) -> None:
    data = str(tmp_path / "digits")
    first = epochs_printed(script("fastai_mnist.py", "shelf", data, "--epochs", "3", tmp=tmp_path))
    shelf = ms.Shelf(tmp_path / "shelf")
    best_first = min(row["valid_loss"] for row in first)
    assert shelf.get("digits-resnet:best").metadata["monitored_value"] == pytest.approx(best_first)
    n = len(shelf.versions("digits-resnet"))
    # A worse second training (a learning rate far too small) saves nothing.
    second = script(
        "fastai_mnist.py", "shelf", data, "--epochs", "2", "--lr", "1e-7", "--seed", "7",
        tmp=tmp_path,
    )  # fmt: skip
    assert min(r["valid_loss"] for r in epochs_printed(second)) > best_first
    assert "improving on digits-resnet:v" in second.stderr
    assert len(shelf.versions("digits-resnet")) == n
    best = shelf.get("digits-resnet:best")
    assert best.metadata["monitored_value"] == pytest.approx(best_first)
    assert best.metadata["model"]["recipe"]["builder"] == "fastai.vision_learner"
    loss = load_in_fresh_process(tmp_path, FASTAI_LOAD.format(data=data))
    assert loss == pytest.approx(best_first, rel=1e-4)


def test_fastai_kill_between_improvements_resumes_at_the_next_epoch(tmp_path: Path) -> None:
    data = str(tmp_path / "digits")
    killed = script(
        "fastai_mnist.py", "shelf", data, "--epochs", "5", "--kill-after-epoch", "2",
        tmp=tmp_path,
    )  # fmt: skip
    assert killed.returncode == -9
    assert [r["epoch"] for r in epochs_printed(killed)] == [0, 1, 2]
    resumed = script("fastai_mnist.py", "shelf", data, "--epochs", "5", "--resume", tmp=tmp_path)
    assert [r["epoch"] for r in epochs_printed(resumed)] == [3, 4]  # not again from 0 or 1
    shelf = ms.Shelf(tmp_path / "shelf")
    runs = {r.status: r for r in shelf.runs()}
    assert runs["finished"].config["resumed_from"]["epoch"] == 2
    assert runs["finished"].config["resumed_from"]["run"] == runs["crashed"].id
    assert shelf.repository.storage.find("resume") == []  # both points removed
    saved = [v.metadata["epoch"] for v in shelf.versions("digits-resnet")]
    assert saved == sorted(set(saved))  # epoch numbers only go up


def test_fastai_fine_tune_keeps_epochs_increasing(tmp_path: Path) -> None:
    proc = script(
        "fastai_mnist.py", "shelf", str(tmp_path / "digits"), "--epochs", "2", "--fine-tune",
        tmp=tmp_path,
    )  # fmt: skip
    rows = epochs_printed(proc)
    assert [(r["fit"], r["epoch"]) for r in rows] == [(0, 0), (1, 0), (1, 1)]
    shelf = ms.Shelf(tmp_path / "shelf")
    versions = shelf.versions("digits-resnet")
    saved = [(v.metadata.get("phase", 0), v.metadata["epoch"]) for v in versions]
    assert saved == sorted(saved) and len({e for _, e in saved}) == len(saved)
    assert all(e == p + (e - p) for p, e in saved)
    phase_one = [e for p, e in saved if p == 1]
    assert all(e >= 1 for e in phase_one)  # the unfrozen fit's epochs follow the frozen one's


# -- Keras: keras.io's MNIST convnet, validation_split ----------------------------------------
KERAS_LOAD = """
import numpy as np
import modelshelf as ms
from keras_mnist_convnet import data
model = ms.load_model("digits-cnn:best")
x, y = data()
cut = int(len(x) * (1 - 0.1))  # validation_split takes the last 10%
print(float(model.evaluate(x[cut:], y[cut:], verbose=0, return_dict=True)["accuracy"]))
"""


def test_keras_convnet_best_across_trainings_and_reload(tmp_path: Path) -> None:
    first = epochs_printed(script("keras_mnist_convnet.py", "shelf", "--epochs", "4", tmp=tmp_path))
    best_first = max(r["val_accuracy"] for r in first)
    shelf = ms.Shelf(tmp_path / "shelf")
    n = len(shelf.versions("digits-cnn"))
    second = script("keras_mnist_convnet.py", "shelf", "--epochs", "1", "--seed", "5", tmp=tmp_path)
    assert max(r["val_accuracy"] for r in epochs_printed(second)) < best_first
    assert len(shelf.versions("digits-cnn")) == n  # nothing saved by the worse training
    best = shelf.get("digits-cnn:best")
    assert best.metadata["monitored_value"] == pytest.approx(best_first)
    assert load_in_fresh_process(tmp_path, KERAS_LOAD) == pytest.approx(best_first, abs=1e-6)


def test_keras_resume_needs_initial_epoch_and_then_goes_on(tmp_path: Path) -> None:
    killed = script(
        "keras_mnist_convnet.py", "shelf", "--epochs", "6", "--kill-after-epoch", "2",
        tmp=tmp_path,
    )  # fmt: skip
    assert killed.returncode == -9
    one_line = script(
        "keras_mnist_convnet.py", "shelf", "--epochs", "6", "--resume", tmp=tmp_path, ok=False
    )
    assert one_line.returncode != 0 and epochs_printed(one_line) == []  # trained nothing
    assert "initial_epoch=cb.initial_epoch" in one_line.stderr
    resumed = script(
        "keras_mnist_convnet.py", "shelf", "--epochs", "6", "--resume", "--initial-epoch",
        tmp=tmp_path,
    )  # fmt: skip
    assert [r["epoch"] for r in epochs_printed(resumed)] == [3, 4, 5]
    shelf = ms.Shelf(tmp_path / "shelf")
    saved = [v.metadata["epoch"] for v in shelf.versions("digits-cnn")]
    assert saved == sorted(set(saved))
    statuses = sorted(r.status for r in shelf.runs())
    assert statuses == ["crashed", "failed", "finished"]


# -- Lightning: the classifier through LightningCLI -----------------------------------------
LIGHTNING_LOAD = """
import torch
import modelshelf as ms
import lightning_cli_classifier as script  # the class was defined in the script (__main__)
model = ms.load_model("digits-cli:best")
x, y = script.digits_split()[1].tensors
with torch.no_grad():
    print(torch.nn.functional.cross_entropy(model(x), y).item())
"""
CLI_CALLBACK = [
    "--trainer.callbacks+=modelshelf.integrations.lightning.ShelfCheckpoint",
    "--trainer.callbacks.name=digits-cli",
    "--trainer.callbacks.monitor=val_loss",
]


@pytest.mark.parametrize("how", ["command line", "config file", "trainer_defaults"])
def test_lightning_cli_best_across_trainings_and_reload(tmp_path: Path, how: str) -> None:
    if how == "command line":
        way = CLI_CALLBACK
    elif how == "config file":
        (tmp_path / "config.yaml").write_text(
            "trainer:\n"
            "  callbacks:\n"
            "    - class_path: modelshelf.integrations.lightning.ShelfCheckpoint\n"
            "      init_args:\n"
            "        name: digits-cli\n"
            "        monitor: val_loss\n"
        )
        way = ["--config", "config.yaml"]
    else:
        way = ["--defaults"]
    first = script(
        "lightning_cli_classifier.py", "fit", *way, "--trainer.max_epochs=3",
        "--model.learning_rate=0.003", tmp=tmp_path,
    )  # fmt: skip
    shelf = ms.Shelf(tmp_path / "shelf")
    best = shelf.get("digits-cli:best")
    assert best.metadata["model"]["recipe"]["lightning_cli"] is True
    n = len(shelf.versions("digits-cli"))
    assert f"digits-cli:v{n - 1} saved" in first.stderr
    second = script(
        "lightning_cli_classifier.py", "fit", *way, "--trainer.max_epochs=1",
        "--model.learning_rate=0.0001", tmp=tmp_path,
    )  # fmt: skip
    assert f"improving on digits-cli:v{best.version}" in second.stderr
    assert len(shelf.versions("digits-cli")) == n and shelf.get("digits-cli:best") == best
    loss = load_in_fresh_process(tmp_path, LIGHTNING_LOAD)
    assert loss == pytest.approx(best.metadata["monitored_value"], rel=1e-5)
