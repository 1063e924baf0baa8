"""The Keras ShelfCheckpoint with real model.fit on digits (TensorFlow; torch in a subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "tensorflow":
    pytest.skip("these tests run under the TensorFlow backend", allow_module_level=True)

import numpy as np  # noqa: E402

import modelshelf as ms  # noqa: E402
from keras_train import build, data  # noqa: E402
from modelshelf.integrations.keras import ShelfCheckpoint  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "keras_train.py"
SCORES = [3.0, 2.0, 2.5, 1.0, 1.5, 1.2]  # improves at epochs 0, 1 and 3


class Score(keras.callbacks.Callback):
    """Puts a scripted 'score' into the epoch's logs, before ShelfCheckpoint reads them."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        assert logs is not None
        logs["score"] = self.scores[epoch]
        logs["widgets"] = 1.0  # a name whose direction cannot be told


def fit(
    cb: ShelfCheckpoint,
    epochs: int,
    scores: list[float] = SCORES,
    extra: list[object] | None = None,
) -> keras.Model:
    x, y = data()
    model = build()
    model.fit(
        x[:256], y[:256], validation_data=(x[256:384], y[256:384]), epochs=epochs,
        batch_size=32, shuffle=False, verbose=0, callbacks=[Score(scores), cb, *(extra or [])],
    )  # fmt: skip
    return model


def test_improved_versions_metadata_and_config(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    fit(ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", config={"note": "x"}), 6)
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [0, 1, 3]
    assert shelf.get("net:best") == shelf.get("net:latest") == versions[-1]
    meta = versions[-1].metadata
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "score"} <= set(meta["metrics"])
    assert meta["best_so_far"] == 1.0 and meta["global_step"] == 4 * 8
    assert meta["model"]["format"] == "keras" and sorted(versions[-1].files) == ["model.keras"]
    run = versions[-1].logged_by()
    assert run is not None and run.status == "finished" and run.config["note"] == "x"
    history = run.history()  # every epoch's metrics, for ranking runs
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4, 5]
    assert [row["score"] for row in history] == SCORES[:6]
    assert run.summary["score"] == SCORES[5]
    assert run.config["params"]["epochs"] == 6 and run.config["backend"] == "tensorflow"
    assert run.config["optimizer"]["name"] == "adam" and run.config["model"]["name"]
    assert "SparseCategoricalCrossentropy" in str(run.config["compile"]["loss"])


def test_all_and_auto_mode(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    fit(
        ShelfCheckpoint("net", shelf=shelf, monitor="val_accuracy", save="all", every_n_epochs=2), 4
    )
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [1, 3]
    accuracies = [v.metadata["monitored_value"] for v in versions]
    assert shelf.get("net:best").metadata["monitored_value"] == max(accuracies)  # maximised
    with pytest.raises(ms.InvalidArgumentError, match="mode='min' or mode='max'"):
        fit(ShelfCheckpoint("other", shelf=shelf, monitor="widgets"), 1)


def test_keep_last(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    scores = [5.0, 1.0, 4.0, 3.0, 6.0, 7.0]
    fit(
        ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", save="all", keep_last=2),
        6,
        scores,
    )
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [1, 4, 5]


def test_monitor_typo_lists_the_metrics(tmp_path: Path) -> None:
    cb = ShelfCheckpoint("net", shelf=ms.Shelf(tmp_path / "shelf"), monitor="val_los")
    with pytest.raises(
        ms.NotFoundError, match=r"'val_los'.*accuracy, loss, score, val_accuracy, val_loss, widgets"
    ):
        fit(cb, 1)


def test_best_reproduces_model_evaluate(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    fit(ShelfCheckpoint("net", shelf=shelf, monitor="val_loss", save="all"), 3)
    best = shelf.get("net:best")
    model = ms.load_model("net:best", shelf=shelf)
    assert isinstance(model, keras.Model)
    x, y = data()
    loss, accuracy = model.evaluate(x[256:384], y[256:384], verbose=0)
    assert loss == pytest.approx(best.metadata["metrics"]["val_loss"], rel=1e-5)
    assert accuracy == pytest.approx(best.metadata["metrics"]["val_accuracy"], rel=1e-5)


def test_weights_only_versions_load_into_a_model(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    trained = fit(ShelfCheckpoint("net", shelf=shelf, save_weights_only=True), 2)
    assert sorted(shelf.get("net").files) == ["model.weights.h5"]
    with pytest.raises(ms.UnsupportedModelError, match="model=model"):
        ms.load_model("net", shelf=shelf)
    loaded = ms.load_model("net", shelf=shelf, model=build())
    for a, b in zip(trained.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_writer_error_surfaces_from_fit(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", save="all")

    class BreakShelf(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            if epoch == 1:
                cb.engine._writer.drain()
                shutil.rmtree(tmp_path / "shelf" / "blobs")
                (tmp_path / "shelf" / "blobs").write_text("not a folder any more")

    with pytest.raises(OSError):
        fit(cb, 4, extra=[BreakShelf()])
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1]


def _script(*args: str, tmp: Path, backend: str = "tensorflow") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELSHELF_CACHE": str(tmp / "cache"), "KERAS_BACKEND": backend}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    full = _script(
        str(tmp_path / "full"), "--epochs", "5", "--out", str(tmp_path / "full.npz"), tmp=tmp_path
    )
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _script(
        str(tmp_path / "shelf"), "--epochs", "5", "--kill-after-version", "1", tmp=tmp_path
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    shelf = ms.Shelf(tmp_path / "shelf")
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1]
    resumed = _script(
        str(tmp_path / "shelf"),
        "--epochs",
        "5",
        "--resume",
        "--out",
        str(tmp_path / "resumed.npz"),
        tmp=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1, 2, 3, 4]
    a, b = np.load(tmp_path / "full.npz"), np.load(tmp_path / "resumed.npz")
    for key in a.files:  # same seed, no shuffling, Adam's variables restored: bit-exact
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_torch_backend(tmp_path: Path) -> None:
    proc = _script(str(tmp_path / "shelf"), "--epochs", "2", tmp=tmp_path, backend="torch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend torch" in proc.stdout
    shelf = ms.Shelf(tmp_path / "shelf")
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1]
    assert shelf.get("net").metadata["model"]["backend"] == "torch"


DIES_IN_FIT = r"""
import sys, time
import modelshelf._training.engine as engine
from modelshelf.integrations.keras import ShelfCheckpoint

import keras
from keras_train import build, data

write = engine.CheckpointEngine._write
def slow_write(self, *args, **kwargs):  # the write is still pending when fit dies
    time.sleep(1.5)
    return write(self, *args, **kwargs)
engine.CheckpointEngine._write = slow_write

class Diverged(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise RuntimeError("loss diverged")

x, y = data()
checkpoint = ShelfCheckpoint("net", shelf=sys.argv[1], monitor="loss")
build().fit(x[:256], y[:256], epochs=3, verbose=0, callbacks=[checkpoint, Diverged()])
"""


@pytest.mark.slow
def test_a_pending_version_is_committed_when_fit_dies(tmp_path: Path) -> None:
    """Keras calls no callback hook when fit raises; the pending write still finishes."""
    proc = subprocess.run(
        [sys.executable, "-c", DIES_IN_FIT, str(tmp_path / "shelf")],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )  # fmt: skip
    assert proc.returncode == 1 and "loss diverged" in proc.stderr, proc.stderr[-3000:]
    shelf = ms.Shelf(tmp_path / "shelf")
    (version,) = shelf.versions("net")
    assert version.metadata["epoch"] == 0
    version.verify()
    assert version.logged_by().status == "crashed"  # type: ignore[union-attr]


def test_a_lambda_layer_is_refused_without_allow_pickle(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    shelf.log_model(model, "doubler")
    with pytest.raises(ms.UnsafeLoadError, match=r"doubler:v0/model.keras.*allow_pickle=True"):
        shelf.load_model("doubler")
    loaded = shelf.load_model("doubler", allow_pickle=True)
    out = loaded.predict(np.ones((1, 3), dtype="float32"), verbose=0)
    assert out.tolist() == [[2.0, 2.0, 2.0]]


class Weights(keras.callbacks.Callback):
    """The model's weights and optimizer step at each epoch's end (after ShelfCheckpoint)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[list[np.ndarray], int]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.seen.append(([np.array(w) for w in self.model.get_weights()], step))


def test_each_checkpoint_holds_its_epoch_although_it_is_made_in_the_background(
    tmp_path: Path,
) -> None:
    """The archive is made from a copy on another thread while the next epochs train: each
    version holds exactly the weights and optimizer step of its own epoch."""
    import modelshelf.integrations.keras as integration

    class Release(keras.callbacks.Callback):
        """Lets archives be made only once epoch 1 has trained a few batches."""

        def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
            self.epoch = epoch

        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            if self.epoch >= 1 and batch >= 2:
                gate.set()

    gate = threading.Event()
    integration._archivist().submit(gate.wait, 60)  # holds the archive of epoch 0 back
    shelf = ms.Shelf(tmp_path / "shelf")
    seen = Weights()
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="score", save="all")
    fit(cb, 4, extra=[seen, Release()])
    assert gate.is_set()
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [0, 1, 2, 3]
    for version, (weights, step) in zip(versions, seen.seen, strict=True):
        loaded = keras.models.load_model(version.path("model.keras"))
        for got, want in zip(loaded.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(got, want)
        assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == step
    assert len({seen.seen[i][1] for i in range(4)}) == 4  # training did move on between them


class Unclonable(keras.Model):  # type: ignore[misc]
    """A subclassed model without get_config: it cannot be cloned, so it is saved as is."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.out = keras.layers.Dense(10)

    def call(self, x: object) -> object:
        return self.out(self.hidden(keras.ops.reshape(x, (-1, 64))))


def test_a_model_that_cannot_be_cloned_is_checkpointed_on_the_training_thread(
    tmp_path: Path,
) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    x, y = data()
    model = Unclonable()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(True))
    seen = Weights()
    cb = ShelfCheckpoint("sub", shelf=shelf, monitor="loss", save_weights_only=True, save="all")
    model.fit(x[:128], y[:128], epochs=2, verbose=0, callbacks=[cb, seen])
    fresh = Unclonable()
    fresh(x[:1])
    fresh.load_weights(shelf.get("sub:v0").path("model.weights.h5"))
    for got, want in zip(fresh.get_weights(), seen.seen[0][0], strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_shadow_is_cloned_beside_the_first_epoch_not_on_the_training_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model built when fit starts is cloned for the background archives on the archivist's
    thread while the first epoch trains, once: never on the training thread."""
    threads: list[str] = []
    clone = keras.models.clone_model

    def recording(model: object, *args: object, **kwargs: object) -> object:
        threads.append(threading.current_thread().name)
        return clone(model, *args, **kwargs)

    monkeypatch.setattr(keras.models, "clone_model", recording)
    shelf = ms.Shelf(tmp_path / "shelf")
    seen = Weights()
    fit(ShelfCheckpoint("net", shelf=shelf, monitor="score", save="all"), 3, extra=[seen])
    assert len(threads) == 1 and threads[0].startswith("modelshelf-keras"), threads
    for version, (weights, _step) in zip(shelf.versions("net"), seen.seen, strict=True):
        loaded = keras.models.load_model(version.path("model.keras"))
        for got, want in zip(loaded.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(got, want)
