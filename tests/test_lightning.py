"""The Lightning ShelfCheckpoint, with real Lightning training on digits (CPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

L = pytest.importorskip("lightning.pytorch")
torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import modelshelf as ms  # noqa: E402
from modelshelf.integrations.lightning import ShelfCheckpoint  # noqa: E402
from zoo import digits  # noqa: E402

TESTS = Path(__file__).resolve().parent
SCRIPT = TESTS / "lightning_train.py"


class Scripted(L.LightningModule):
    """Trains for real, and also logs 'score' from a script of values, one per epoch."""

    def __init__(self, scores: list[float] | None = None, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))
        if self.hparams.scores:
            self.log("score", float(self.hparams.scores[self.current_epoch]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(
    model: L.LightningModule, callback: ShelfCheckpoint, epochs: int, **trainer_kw: object
) -> L.Trainer:
    x, y = digits(384)
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=32)
    val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=128)
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, **trainer_kw,
    )  # fmt: skip
    trainer.fit(model, train, val)
    return trainer


SCORES = [3.0, 2.0, 2.5, 1.0, 1.5, 1.2]  # improves at epochs 0, 1 and 3


def test_improved_saves_one_version_per_improvement(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", config={"note": "x"})
    fit(Scripted(SCORES), cb, epochs=6)
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [0, 1, 3]
    assert [v.metadata["monitored_value"] for v in versions] == [3.0, 2.0, 1.0]
    assert shelf.get("net:best") == shelf.get("net:latest") == versions[-1]
    meta = versions[-1].metadata
    assert meta["global_step"] == 4 * 8 and meta["best_so_far"] == 1.0 and meta["improved"] is True
    assert set(meta["metrics"]) == {"val_loss", "score"}
    assert sorted(versions[-1].files) == ["model.safetensors", "training-state.ckpt"]
    run = versions[-1].logged_by()
    assert run is not None and run.status == "finished"
    assert run.config["note"] == "x" and run.config["hparams"]["scores"] == SCORES
    assert run.config["trainer"]["max_epochs"] == 6
    assert run.config["optimizers"][0]["class"] == "SGD"
    assert run.config["optimizers"][0]["param_groups"][0]["lr"] == 0.1
    assert run.config["dataset_sizes"] == {"train": 256, "val": 128}
    assert run.config["batch_size"] == 32
    history = run.history()  # every epoch's metrics, for ranking runs
    assert [row["epoch"] for row in history] == list(range(len(SCORES)))
    assert [row["score"] for row in history] == pytest.approx(SCORES)  # float32 in Lightning
    assert run.summary["score"] == pytest.approx(SCORES[-1]) and "val_loss" in run.summary


def test_all_saves_every_checked_epoch_and_best_at_the_minimum(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint(
        "net", shelf=shelf, monitor="score", mode="min", save="all", every_n_epochs=2
    )
    fit(Scripted(SCORES), cb, epochs=6)
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [1, 3, 5]  # every second epoch
    assert shelf.get("net:latest").metadata["epoch"] == 5
    assert shelf.get("net:best").metadata["epoch"] == 3  # score 1.0


def test_nan_never_improves(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", save="all")
    fit(Scripted([2.0, float("nan"), 1.0]), cb, epochs=3)
    assert [v.metadata["improved"] for v in shelf.versions("net")] == [True, False, True]
    assert shelf.versions("net")[1].metadata["monitored_value"] is None


def test_keep_last_bounds_the_shelf(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", save="all", keep_last=2)
    scores = [5.0, 1.0, 4.0, 3.0, 6.0, 7.0, 8.0, 9.0]  # best stays at epoch 1
    fit(Scripted(scores), cb, epochs=8)
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [1, 6, 7]  # 2 newest + the aliased best
    stored = sum(p.stat().st_size for p in (tmp_path / "shelf" / "blobs").rglob("*") if p.is_file())
    assert stored <= sum(v.size for v in versions)


def test_monitor_typo_lists_the_metrics(tmp_path: Path) -> None:
    cb = ShelfCheckpoint("net", shelf=ms.Shelf(tmp_path / "shelf"), monitor="val_los")
    with pytest.raises(ms.NotFoundError, match=r"'val_los'.*Metrics that exist: score, val_loss"):
        fit(Scripted(SCORES), cb, epochs=1)


def test_best_reloads_and_reproduces_its_validation_loss(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="val_loss", save="all")
    fit(Scripted(), cb, epochs=3)
    best = shelf.get("net:best")
    model = ms.load_model("net:best", shelf=shelf)
    assert type(model).__name__ == "Scripted"
    x, y = digits(384)
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x[256:]), y[256:]).item()
    assert loss == pytest.approx(best.metadata["monitored_value"], rel=1e-6)
    assert best.metadata["monitored_value"] == min(
        v.metadata["monitored_value"] for v in shelf.versions("net")
    )


def test_writer_error_surfaces_from_fit_and_keeps_earlier_versions(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")

    class BreakShelf(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.current_epoch == 1:  # the blob store breaks: no file can be stored
                cb.engine._writer.drain()
                shutil.rmtree(tmp_path / "shelf" / "blobs")
                (tmp_path / "shelf" / "blobs").write_text("not a folder any more")

    cb = ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min", save="all")
    x, y = digits(384)
    trainer = L.Trainer(
        max_epochs=4, callbacks=[cb, BreakShelf()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(OSError):
        trainer.fit(
            Scripted(SCORES),
            DataLoader(TensorDataset(x[:256], y[:256]), batch_size=32),
            DataLoader(TensorDataset(x[256:], y[256:]), batch_size=128),
        )
    kept = shelf.versions("net")
    assert [v.metadata["epoch"] for v in kept] == [0, 1]  # nothing half-written after them
    (run,) = shelf.runs()
    assert run.status == "failed" and "NotADirectoryError" in (run.error or "")


def test_lightning_ckpt_path_resume_restores_the_best_score(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min")
    fit(Scripted(SCORES), cb, epochs=4)  # best 1.0 at epoch 3
    state = torch.load(shelf.get("net:latest").path("training-state.ckpt"), weights_only=True)
    assert state["callbacks"][cb.state_key]["best"] == 1.0
    fresh = ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min")
    fresh.load_state_dict(state["callbacks"][cb.state_key])
    assert fresh.engine.best == 1.0


def _script(*args: str, tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELSHELF_CACHE": str(tmp / "cache"), "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    full = _script(
        str(tmp_path / "full"),
        "--epochs",
        "5",
        "--save",
        "all",
        "--out",
        str(tmp_path / "full.pt"),
        tmp=tmp_path,
    )
    assert full.returncode == 0, full.stderr[-3000:]

    killed = _script(
        str(tmp_path / "shelf"),
        "--epochs",
        "5",
        "--save",
        "all",
        "--kill-after-version",
        "1",
        tmp=tmp_path,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    shelf = ms.Shelf(tmp_path / "shelf")
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1]
    assert shelf.runs()[0].status == "crashed"

    resumed = _script(
        str(tmp_path / "shelf"),
        "--epochs",
        "5",
        "--save",
        "all",
        "--resume",
        "--out",
        str(tmp_path / "resumed.pt"),
        tmp=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1, 2, 3, 4]
    assert shelf.get("net:v2").metadata["global_step"] == 3 * 10  # it went on from epoch 2
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for key in a:  # same seed, deterministic CPU ops, optimizer momentum restored: bit-exact
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_a_kill_between_improvements_resumes_from_the_last_epoch_bit_exact(
    tmp_path: Path,
) -> None:
    """Only epoch 0 improves ('worse' grows); killed after epoch 3, the relaunch goes on at
    epoch 4 from the resume point (weights, optimizer, loops), not from v0 at epoch 1."""
    common = ["--epochs", "6", "--monitor", "worse"]
    full = _script(
        str(tmp_path / "full"), *common, "--out", str(tmp_path / "full.pt"), tmp=tmp_path
    )
    assert full.returncode == 0, full.stderr[-3000:]
    killed = _script(str(tmp_path / "shelf"), *common, "--kill-after-epoch", "3", tmp=tmp_path)
    assert killed.returncode == -9, killed.stderr[-3000:]
    shelf = ms.Shelf(tmp_path / "shelf")
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0]
    resumed = _script(
        str(tmp_path / "shelf"), *common, "--resume", "--out", str(tmp_path / "resumed.pt"),
        tmp=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "epochs run: 6 global step: 60" in resumed.stdout
    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    run = next(r for r in shelf.runs() if r.status == "finished")
    assert run.config["resumed_from"]["epoch"] == 3
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0]  # nothing improved
    assert shelf.repository.storage.find("resume") == []


@pytest.mark.slow
def test_ddp_two_cpu_processes_write_each_checkpoint_once(tmp_path: Path) -> None:
    proc = _script(
        str(tmp_path / "shelf"),
        "--epochs",
        "3",
        "--save",
        "all",
        "--ddp",
        tmp=tmp_path,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shelf = ms.Shelf(tmp_path / "shelf")
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [0, 1, 2]  # once each, not twice
    losses = [v.metadata["monitored_value"] for v in versions]
    assert shelf.get("net:best").metadata["monitored_value"] == min(losses)
    (run,) = shelf.runs()
    assert run.status == "finished" and run.config["trainer"]["devices"] == 2
    assert run.config["trainer"]["strategy"] == "DDPStrategy"


def test_works_with_the_pytorch_lightning_package_too(tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")

    class Old(pl.LightningModule):
        def __init__(self, hidden: int = 8) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    shelf = ms.Shelf(tmp_path / "shelf")
    x, y = digits(128)
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[ShelfCheckpoint("old", shelf=shelf)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Old(), DataLoader(TensorDataset(x, y), batch_size=32))
    # No validation loop: it decides at the end of each training epoch, saving all of them.
    assert [v.metadata["epoch"] for v in shelf.versions("old")] == [0, 1]
    assert shelf.get("old").metadata["model"]["framework"] == "lightning"


def test_fast_dev_run_and_sanity_check_save_nothing(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint("net", shelf=shelf, monitor="score", mode="min")
    fit(Scripted(SCORES), cb, epochs=2, fast_dev_run=True)
    assert shelf.artifacts() == [] and shelf.runs() == []
    fit(Scripted(SCORES), cb, epochs=1, num_sanity_val_steps=1)  # the sanity check is skipped
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0]


class Tokenizer:
    """Something a user passes to their module: not plain data, so it can only be pickled."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab


def test_resume_that_needs_unpickling_asks_for_allow_pickle(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")

    class WithObject(Scripted):
        def __init__(self, tokenizer: Tokenizer | None = None, scores: list[float] | None = None):
            super().__init__(scores)
            self.save_hyperparameters()

    fit(WithObject(Tokenizer(5), SCORES), ShelfCheckpoint("net", shelf=shelf, save="all"), epochs=1)
    resumed = ShelfCheckpoint("net", shelf=shelf, save="all", resume=True)
    with pytest.raises(ms.UnsafeLoadError, match=r"net:v0.*allow_pickle=True"):
        fit(WithObject(Tokenizer(5), SCORES), resumed, epochs=2)
    trusted = ShelfCheckpoint("net", shelf=shelf, save="all", resume=True, allow_pickle=True)
    fit(WithObject(Tokenizer(5), SCORES), trusted, epochs=2)
    assert [v.metadata["epoch"] for v in shelf.versions("net")] == [0, 1]  # went on at epoch 1


@pytest.mark.slow
def test_lightning_cli_takes_the_callback_and_its_options_from_the_command_line(
    tmp_path: Path,
) -> None:
    """The adapter forwards **options, and its signature spells them out for jsonargparse."""
    pytest.importorskip("jsonargparse")
    script = Path(__file__).parent / "lightning_cli.py"
    proc = subprocess.run(
        [
            sys.executable, str(script), "fit", "--trainer.max_epochs=3",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.callbacks+=modelshelf.integrations.lightning.ShelfCheckpoint",
            "--trainer.callbacks.name=cli-net", "--trainer.callbacks.monitor=val_loss",
            "--trainer.callbacks.save=all", "--trainer.callbacks.keep_last=2",
            f"--trainer.callbacks.shelf={tmp_path / 'shelf'}",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    shelf = ms.Shelf(tmp_path / "shelf")
    versions = shelf.versions("cli-net")
    assert [v.metadata["epoch"] for v in versions] == [1, 2]  # save=all, keep_last=2
    assert {v.metadata["monitor"] for v in versions} == {"val_loss"}
    run = versions[0].logged_by()
    assert run is not None and run.config["hparams"]["lr"] == 0.1


class EpochMetrics(Scripted):
    """Logs a training metric reduced per epoch, as most modules do."""

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss


def test_a_versions_metrics_are_those_its_epoch_logged(tmp_path: Path) -> None:
    import csv

    shelf = ms.Shelf(tmp_path / "shelf")
    cb = ShelfCheckpoint("net", shelf=shelf, save="all", keep_last=None)
    x, y = digits(384)
    trainer = L.Trainer(
        max_epochs=3, callbacks=[cb], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, logger=L.loggers.CSVLogger(tmp_path / "logs"),
    )  # fmt: skip
    trainer.fit(
        EpochMetrics(),
        DataLoader(TensorDataset(x[:256], y[:256]), batch_size=32),
        DataLoader(TensorDataset(x[256:], y[256:]), batch_size=128),
    )
    with open(trainer.logger.experiment.metrics_file_path) as f:
        rows = list(csv.DictReader(f))
    logged = {int(r["epoch"]): float(r["train_loss_epoch"]) for r in rows if r["train_loss_epoch"]}
    val = {int(r["epoch"]): float(r["val_loss"]) for r in rows if r["val_loss"]}
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [0, 1, 2]
    for v in versions:
        epoch = v.metadata["epoch"]
        assert v.metadata["metrics"]["train_loss_epoch"] == pytest.approx(logged[epoch], rel=1e-6)
        assert v.metadata["metrics"]["val_loss"] == pytest.approx(val[epoch], rel=1e-6)


class LitAutoEncoder(L.LightningModule):
    """Lightning's autoencoder example: the modules are passed in, no save_hyperparameters."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        x, _ = batch
        loss = nn.functional.mse_loss(self.decoder(self.encoder(x)), x)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_a_model_that_cannot_be_rebuilt_is_said_at_save_and_at_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    model = LitAutoEncoder(
        nn.Sequential(nn.Linear(64, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 64))
    )
    x, y = digits(128)
    trainer = L.Trainer(
        max_epochs=2, callbacks=[ShelfCheckpoint("ae", shelf=shelf, monitor="train_loss")],
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=32))
    warnings = [r.getMessage() for r in caplog.records if "load_model will need" in r.getMessage()]
    assert len(warnings) == 1  # once, not at every checkpoint
    assert "ae: load_model will need model=" in warnings[0] and "LitAutoEncoder" in warnings[0]
    with pytest.raises(ms.UnsupportedModelError) as err:
        ms.load_model("ae:best", shelf=shelf)
    message = str(err.value)
    assert len(message) < 300 and "LitAutoEncoder" in message and "model=" in message
    fresh = LitAutoEncoder(
        nn.Sequential(nn.Linear(64, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 64))
    )
    loaded = ms.load_model("ae:best", shelf=shelf, model=fresh)
    assert torch.equal(loaded.encoder[0].weight, model.encoder[0].weight)


class FrozenBody(L.LightningModule):
    """A fine-tune: two frozen 1 MiB layers (a chunk each on the shelf) under a trained head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 512), nn.Linear(512, 512), nn.Linear(512, 512))
        self.body.requires_grad_(False)
        self.head = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


def test_checkpoints_of_a_fine_tune_store_the_frozen_body_once(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    model = FrozenBody()
    fit(model, ShelfCheckpoint("ft", shelf=shelf, save_weights_only=True), epochs=3)
    versions = shelf.versions("ft")
    assert len(versions) == 3
    weights = [v.manifest.files["model.safetensors"] for v in versions]
    assert all(w.chunks for w in weights)
    frozen = {d for w in weights for d, n in w.chunks if n == 512 * 512 * 4}
    assert len(frozen) == 2  # the two 1 MiB frozen layers: one chunk each, in every version
    blobs = sum(
        os.path.getsize(p) for p in (tmp_path / "shelf" / "blobs").rglob("*") if p.is_file()
    )
    assert blobs < weights[0].size + 2 * (weights[0].size - 2 * 512 * 512 * 4)
    loaded = shelf.load_model("ft:latest", model=FrozenBody())
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


class Recorder(L.Callback):
    """The weights at each epoch's end, as the checkpoint before it saw them."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights.append({k: v.clone() for k, v in pl_module.state_dict().items()})


def test_background_snapshots_reuse_host_buffers_without_mixing_epochs(
    tmp_path: Path, s3_endpoint: str
) -> None:
    """On S3 each write outlasts an epoch, so snapshots queue up behind the writer: the host
    buffers a write still reads are never filled again before it is done."""
    from conftest import new_bucket

    shelf = ms.Shelf(f"s3://{new_bucket(s3_endpoint)}/shelf")
    recorder = Recorder()
    cb = ShelfCheckpoint("net", shelf=shelf, save="all", background=True, keep_last=None)
    x, y = digits(384)
    trainer = L.Trainer(
        max_epochs=5, callbacks=[cb, recorder], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(
        Scripted(hidden=256), DataLoader(TensorDataset(x, y), batch_size=32),
        DataLoader(TensorDataset(x[:64], y[:64]), batch_size=64),
    )  # fmt: skip
    versions = shelf.versions("net")
    assert [v.metadata["epoch"] for v in versions] == [0, 1, 2, 3, 4]
    for v, expected in zip(versions, recorder.weights, strict=True):
        loaded = shelf.load_model(v.ref, model=Scripted(hidden=256))
        for name, t in loaded.state_dict().items():
            assert torch.equal(t, expected[name]), (v.ref, name)
    first, last = recorder.weights[0], recorder.weights[-1]
    assert not torch.equal(first["net.0.weight"], last["net.0.weight"])  # it did train


def test_host_buffers_are_reused_only_once_released() -> None:
    import pickle

    from modelshelf._training.torch_state import HostBuffers

    host, t = HostBuffers(), torch.randn(64)
    copy1, release1 = host.take()
    a = copy1(("w",), t)
    copy2, _ = host.take()  # the first set is still being written: a second one
    b = copy2(("w",), t)
    assert a.data_ptr() != b.data_ptr() and torch.equal(a, t) and torch.equal(b, t)
    release1()
    copy3, _ = host.take()
    c = copy3(("w",), t * 2)
    assert c.data_ptr() == a.data_ptr() and torch.equal(c, t * 2)
    assert copy3(("w",), torch.ones(3)).shape == (3,)  # a new shape gets a new buffer
    assert isinstance(pickle.loads(pickle.dumps(host)), HostBuffers)
