"""The checkpoint engine's policy, without any framework: what each ShelfCheckpoint shares."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import modelshelf as ms
from modelshelf._core.sources import StreamedFile
from modelshelf._features.resume import points
from modelshelf._training.engine import STATE_FILE, CheckpointEngine, Parts, scalar_metrics
from modelshelf._training.options import (
    AUTO_KEEP_LAST,
    CheckpointOptions,
    keep_last_for,
    make_options,
)


def snapshot(epoch: int, *, state: bool = True, of: object = None):  # type: ignore[no-untyped-def]
    """The parts of one checkpoint: weights that differ per epoch (and per training ``of``),
    and a training state."""

    def make() -> Parts:
        files = {}
        if state:
            files[STATE_FILE] = lambda path: path.write_text(json.dumps({"epoch": epoch}))
        weights = f"weights of epoch {epoch} of {of}".encode()
        return Parts({"w.bin": StreamedFile(lambda: [weights])}, {"format": "files"}, files)

    return make


def train(engine: CheckpointEngine, values: list[float], *, start: int = 0) -> None:
    """A fit: one check per epoch with ``values[i]`` as the monitored metric."""
    engine.begin({"lr": 0.1}, is_writer=True)
    try:
        for epoch, value in enumerate(values, start=start):
            if not engine.due(epoch):
                continue
            metrics = {"val_loss": value, "train_loss": 1.0}
            decision = engine.check(metrics)
            engine.commit(
                decision, epoch=epoch, step=10 * (epoch + 1), metrics=metrics,
                snapshot=snapshot(epoch, of=values),
            )  # fmt: skip
    finally:
        engine.end()


def engine(shelf: ms.Shelf, **options: object) -> CheckpointEngine:
    return CheckpointEngine("net", make_options({"shelf": shelf, **options}))


@pytest.fixture
def shelf(tmp_path: Path) -> ms.Shelf:
    return ms.Shelf(tmp_path / "shelf")


def epochs(shelf: ms.Shelf) -> list[int]:
    return [v.metadata["epoch"] for v in shelf.versions("net")]


@pytest.mark.parametrize("background", [True, False])
def test_improved_keeps_the_best_and_never_a_nan(shelf: ms.Shelf, background: bool) -> None:
    train(engine(shelf, monitor="val_loss", background=background), [3.0, 2.0, math.nan, 2.5, 1.0])
    assert epochs(shelf) == [0, 1, 4]
    best = shelf.get("net:best")
    assert best.metadata["epoch"] == 4 and best.aliases == ["best", "latest"]
    assert [v.metadata["best_so_far"] for v in shelf.versions("net")] == [3.0, 2.0, 1.0]
    assert best.metadata["metrics"] == {"val_loss": 1.0, "train_loss": 1.0}
    assert best.logged_by() is not None and best.logged_by().status == "finished"  # type: ignore[union-attr]
    assert best.logged_by().config == {"lr": 0.1}  # type: ignore[union-attr]


def test_all_saves_every_check_and_moves_best_on_improvement(shelf: ms.Shelf) -> None:
    train(engine(shelf, monitor="val_loss", save="all"), [3.0, 4.0, 2.0, math.nan])
    assert epochs(shelf) == [0, 1, 2, 3]
    assert shelf.get("net:best").metadata["epoch"] == 2
    assert [v.metadata["improved"] for v in shelf.versions("net")] == [True, False, True, False]
    assert shelf.get("net:v3").metadata["monitored_value"] is None  # NaN is not stored as JSON


def test_min_delta_and_max_mode(shelf: ms.Shelf) -> None:
    train(engine(shelf, monitor="val_loss", mode="max", min_delta=0.5), [1.0, 1.4, 1.6, 2.2])
    assert epochs(shelf) == [0, 2, 3]


def test_every_n_epochs_and_keep_last_frees_bytes(shelf: ms.Shelf) -> None:
    train(engine(shelf, every_n_epochs=2, keep_last=2), [5.0] * 8)
    assert epochs(shelf) == [5, 7]  # checks after epochs 1, 3, 5, 7; the two newest kept
    blobs = shelf.repository.storage.find("blobs")
    assert len(blobs) == 4  # weights + state of the two kept versions: the rest was freed


def test_without_monitor_there_is_no_best(shelf: ms.Shelf) -> None:
    train(engine(shelf), [1.0, 2.0])
    assert epochs(shelf) == [0, 1]
    with pytest.raises(ms.NotFoundError, match="no alias 'best'"):
        shelf.get("net:best")


def test_a_missing_monitor_lists_the_metrics(shelf: ms.Shelf) -> None:
    e = engine(shelf, monitor="val_acc")
    with pytest.raises(ms.NotFoundError, match=r"val_acc.*train_loss, val_loss"):
        train(e, [1.0])
    assert shelf.runs()[0].status == "finished"  # the callback's own run ended: no write failed


def test_a_write_error_is_raised_from_the_fit_and_fails_the_run(shelf: ms.Shelf) -> None:
    e = engine(shelf, monitor="val_loss")

    def broken() -> Parts:
        def fail(path: Path) -> None:
            raise OSError("disk full")

        return Parts({}, {"format": "files"}, {STATE_FILE: fail})

    e.begin({}, is_writer=True)
    decision = e.check({"val_loss": 1.0})
    e.commit(decision, epoch=0, step=1, metrics={"val_loss": 1.0}, snapshot=broken)
    with pytest.raises(OSError, match="disk full"):
        e.end()
    (run,) = shelf.runs()
    assert run.status == "failed" and "disk full" in (run.error or "")


def test_resume_restores_the_best_and_continues(shelf: ms.Shelf) -> None:
    train(engine(shelf, monitor="val_loss"), [3.0, 2.0, 2.5])
    again = engine(shelf, monitor="val_loss", resume=True, improve_on="run")
    version = again.resume_from()  # asked before fit starts, as the Keras adapter does
    assert version is not None and version.metadata["epoch"] == 1
    assert json.loads(version.path(STATE_FILE).read_text()) == {"epoch": 1}
    train(again, [2.2, 1.5], start=3)  # 2.2 is no better than the restored best (2.0)
    assert epochs(shelf) == [0, 1, 4]
    run = shelf.get("net:v2").logged_by()
    assert run is not None and run.config["resumed_from"]["version"] == "net:v1"
    assert [v.ref for v in run.inputs()] == ["net:v1"]


def test_resume_refuses_weights_only_versions_and_starts_fresh_on_a_new_name(
    shelf: ms.Shelf,
) -> None:
    e = engine(shelf)
    e.begin({}, is_writer=True)
    decision = e.check({})
    e.commit(decision, epoch=0, step=1, metrics={}, snapshot=snapshot(0, state=False))
    e.end()
    with pytest.raises(ms.ConflictError, match="save_weights_only=False"):
        engine(shelf, resume=True).resume_from()
    fresh = CheckpointEngine("other", make_options({"shelf": shelf, "resume": True}))
    assert fresh.resume_from() is None


def test_auto_mode_that_cannot_tell_asks_for_one(shelf: ms.Shelf) -> None:
    e = engine(shelf, monitor="wobble")
    with pytest.raises(ms.InvalidArgumentError, match="mode='min' or mode='max'"):
        e.decide({"wobble": 1.0})


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mode": "down"}, "mode='down'"),
        ({"save": "best"}, "save='best'"),
        ({"save": "improved"}, "needs monitor="),
        ({"every_n_epochs": 0}, "every_n_epochs"),
        ({"keep_last": 0}, "keep_last"),
        ({"min_delta": -1}, "min_delta"),
        ({"monitr": "val_loss"}, "unknown option.*monitr.*monitor"),
    ],
)
def test_options_are_checked_once_with_clear_errors(options: dict[str, object], match: str) -> None:
    with pytest.raises(ms.InvalidArgumentError, match=match):
        make_options(options)


def test_options_defaults() -> None:
    o = CheckpointOptions(monitor="val_loss")
    assert (o.save, o.mode, o.every_n_epochs, o.keep_last, o.background, o.improve_on) == (
        "improved", "auto", 1, "auto", True, "artifact",
    )  # fmt: skip
    assert CheckpointOptions().save == "all"
    assert keep_last_for("auto", "val_loss") is None  # improvements only: all kept
    assert keep_last_for("auto", None) == AUTO_KEEP_LAST == 3  # every epoch: bounded
    assert keep_last_for(None, None) is None and keep_last_for(5, None) == 5
    with pytest.raises(ms.InvalidArgumentError, match=r"improve_on='best'.*'artifact'.*'run'"):
        make_options({"improve_on": "best"})
    assert CheckpointOptions(aliases=["latest", "best", "candidate"]).aliases == ["candidate"]


def test_scalar_metrics_keeps_single_numbers_only() -> None:
    import numpy as np

    values = {"a": 1, "b": np.float32(2.5), "c": np.array(3.0), "d": np.zeros(2), "e": "x"}
    assert scalar_metrics({**values, "f": None}) == {"a": 1.0, "b": 2.5, "c": 3.0}


# -- best across trainings (improve_on) -----------------------------------------------------


def test_a_worse_second_training_saves_nothing_and_best_stays(
    shelf: ms.Shelf, caplog: pytest.LogCaptureFixture
) -> None:
    train(engine(shelf, monitor="val_loss"), [3.0, 1.0, 2.0])  # best 1.0 at epoch 1 (v1)
    caplog.set_level("INFO", logger="modelshelf")
    train(engine(shelf, monitor="val_loss"), [4.0, 2.5, 1.5])  # never beats 1.0
    assert epochs(shelf) == [0, 1]
    assert shelf.get("net:best").version == 1
    assert "improving on net:v1 (val_loss=1, min), the best across trainings" in caplog.text
    # A better third training goes on from there, and best moves to it.
    train(engine(shelf, monitor="val_loss"), [0.9, 0.95, 0.5])
    assert epochs(shelf) == [0, 1, 0, 2]
    assert shelf.get("net:best").metadata["monitored_value"] == 0.5
    assert shelf.get("net:best").metadata["best_so_far"] == 0.5
    assert shelf.get("net:v2").metadata["improve_on"] == "artifact"


def test_save_all_moves_best_only_past_the_artifacts_best(shelf: ms.Shelf) -> None:
    train(engine(shelf, monitor="val_loss"), [1.0])  # v0
    train(engine(shelf, monitor="val_loss", save="all"), [3.0, 0.5])  # v1 worse, v2 better
    assert [v.metadata["improved"] for v in shelf.versions("net")] == [True, False, True]
    assert shelf.get("net:best").version == 2


def test_improve_on_run_compares_within_the_training_only(
    shelf: ms.Shelf, caplog: pytest.LogCaptureFixture
) -> None:
    train(engine(shelf, monitor="val_loss"), [1.0])
    caplog.set_level("INFO", logger="modelshelf")
    train(engine(shelf, monitor="val_loss", improve_on="run"), [4.0, 5.0])
    assert epochs(shelf) == [0, 0]  # its own first epoch improved on nothing
    assert shelf.get("net:best").metadata["monitored_value"] == 4.0  # as before this option
    assert "compared against this training's own best (improve_on='run')" in caplog.text


@pytest.mark.parametrize(
    ("first", "second"),
    [({"monitor": "val_loss"}, {"monitor": "train_loss"}),  # another metric
     ({"monitor": "val_loss", "mode": "min"}, {"monitor": "val_loss", "mode": "max"})],
)  # fmt: skip
def test_another_monitor_or_mode_warns_and_starts_fresh(
    shelf: ms.Shelf, caplog: pytest.LogCaptureFixture, first: dict, second: dict
) -> None:
    train(engine(shelf, **first), [1.0])
    train(engine(shelf, **second), [9.0])
    assert "net:v0 (the current best) was chosen on 'val_loss'" in caplog.text
    assert "starts fresh" in caplog.text
    assert shelf.get("net:best").version == 1  # the new training's first epoch


def test_the_first_training_says_there_is_no_best_yet(
    shelf: ms.Shelf, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="modelshelf")
    train(engine(shelf, monitor="val_loss"), [1.0, 0.5])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "modelshelf: net: no best yet; the first val_loss (min) becomes best.",
        "modelshelf: net:v0 saved (epoch 0, val_loss=1, best)",
        "modelshelf: net:v1 saved (epoch 1, val_loss=0.5, best)",
    ]


def test_a_best_with_an_odd_monitored_value_is_not_trusted(shelf: ms.Shelf, tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"x")
    shelf.log_artifact(  # as a hostile or hand-made version could be
        tmp_path / "w.bin", "net", type="model", aliases=["best"],
        metadata={"monitor": "val_loss", "mode": "min", "monitored_value": "0.0"},
    )  # fmt: skip
    train(engine(shelf, monitor="val_loss"), [3.0])
    assert shelf.get("net:best").version == 1


def test_no_monitor_keeps_the_newest_three_by_default(shelf: ms.Shelf) -> None:
    train(engine(shelf), [5.0, 4.0, 3.0, 2.0, 1.0])
    assert epochs(shelf) == [2, 3, 4]
    train(engine(shelf, keep_last=None), [5.0, 4.0])  # explicitly unbounded
    assert epochs(shelf) == [2, 3, 4, 0, 1]


def test_a_default_monitor_that_is_not_logged_falls_back_to_saving_every_epoch(
    shelf: ms.Shelf, caplog: pytest.LogCaptureFixture
) -> None:
    eng = CheckpointEngine("net", make_options({"shelf": shelf}, default_monitor="valid_loss"))
    train(eng, [3.0, 2.0, 1.0, 0.5])  # logs val_loss and train_loss, not valid_loss
    assert "the default monitor 'valid_loss' is not logged" in caplog.text
    assert epochs(shelf) == [1, 2, 3]  # every epoch, the newest three kept
    explicit = CheckpointEngine("other", make_options({"shelf": shelf, "monitor": "valid_loss"}))
    with pytest.raises(ms.NotFoundError, match="no such metric"):
        train(explicit, [1.0])


# -- resume points: resume from the last completed epoch ------------------------------------
KILLED_TRAINING = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import modelshelf as ms
from test_engine import engine, snapshot
shelf = ms.Shelf({shelf!r})
values = {values!r}
e = engine(shelf, monitor="val_loss", resume=True, background=False)
e.begin({{}}, is_writer=True)
source = e.resume_from()
start = 0 if source is None else source.metadata["epoch"] + 1
print("START", start, flush=True)
for epoch in range(start, len(values)):
    metrics = {{"val_loss": values[epoch]}}
    d = e.check(metrics)
    e.commit(d, epoch=epoch, step=epoch + 1, metrics=metrics, snapshot=snapshot(epoch, of=values))
    if epoch == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)
e.end()
"""


def run_training(shelf: ms.Shelf, tmp_path: Path, values: list[float], kill_after: int) -> str:
    import subprocess
    import sys

    code = KILLED_TRAINING.format(
        tests=str(Path(__file__).parent), shelf=str(tmp_path / "shelf"), values=values,
        kill_after=kill_after,
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, -9), proc.stderr[-2000:]
    return proc.stdout


def test_resume_goes_on_after_the_last_completed_epoch_not_the_last_improvement(
    shelf: ms.Shelf, tmp_path: Path
) -> None:
    values = [1.0, 2.0, 3.0, 4.0, 0.5, 0.4]  # only epoch 0 improves before the kill
    out = run_training(shelf, tmp_path, values, kill_after=3)
    assert "START 0" in out and epochs(shelf) == [0]
    (point,) = points(shelf.repository, "net")
    assert (point.epoch, point.version, sorted(point.files)) == (3, None, [STATE_FILE, "w.bin"])
    assert json.loads(point.path(STATE_FILE).read_text()) == {"epoch": 3}
    assert point.path("w.bin").read_text() == f"weights of epoch 3 of {values}"

    out = run_training(shelf, tmp_path, values, kill_after=-1)
    assert "START 4" in out  # not 1: epochs 1-3 are not trained again
    assert epochs(shelf) == [0, 4, 5]
    resumed = shelf.get("net:v1").logged_by()
    assert resumed is not None and resumed.status == "finished"
    assert resumed.config["resumed_from"] == {"epoch": 3, "run": point.run_id}
    assert points(shelf.repository, "net") == []  # both trainings' points are gone
    assert shelf.repository.storage.find("resume") == []
    graph = shelf.lineage("net:v1", direction="upstream")
    assert (f"run:{point.run_id}", f"run:{resumed.id}", "resumed") in graph.edges


def test_a_point_of_a_saved_epoch_names_its_version(shelf: ms.Shelf, tmp_path: Path) -> None:
    run_training(shelf, tmp_path, [3.0, 2.0, 1.0], kill_after=1)
    (point,) = points(shelf.repository, "net")
    assert (point.epoch, point.version, point.files) == (1, 1, {})
    again = engine(shelf, monitor="val_loss", resume=True)
    source = again.resume_from()
    assert source == shelf.get("net:v1")


def test_a_finished_training_leaves_no_point(shelf: ms.Shelf) -> None:
    train(engine(shelf, monitor="val_loss"), [3.0, 4.0, 5.0])
    assert points(shelf.repository, "net") == []
    assert shelf.repository.storage.find("resume") == []


def test_weights_only_training_keeps_no_points(shelf: ms.Shelf, tmp_path: Path) -> None:
    e = engine(shelf, monitor="val_loss", save_weights_only=True)
    e.begin({}, is_writer=True)
    d = e.check({"val_loss": 1.0})
    assert not e.keeps_points  # no training state in any snapshot
    d = e.check({"val_loss": 2.0})
    assert not e.wants_snapshot(d)  # nothing to save, no point to keep
    e.end()


@pytest.mark.parametrize(
    "damage",
    ["not json", "other name", "escaping file", "bad digest", "huge size", "no time"],
)
def test_a_damaged_or_hostile_point_is_skipped_or_refused(
    shelf: ms.Shelf, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    from modelshelf._features.resume import keys_for
    from modelshelf._format.records import dumps, loads

    run_training(shelf, tmp_path, [1.0, 2.0, 3.0], kill_after=1)  # a point with files
    storage = shelf.repository.storage
    (key,) = [k for k in storage.find("resume") if k.endswith(".json")]
    record = loads(storage.read(key), key)
    if damage == "not json":
        storage.replace(key, b'{"_sha256":"00", "name"')
    else:
        if damage == "other name":
            record["name"] = "other"
        elif damage == "escaping file":
            record["files"]["../../../x"] = record["files"].pop("w.bin")
        elif damage == "bad digest":
            record["files"]["w.bin"]["sha256"] = "0" * 63
        elif damage == "huge size":
            record["files"]["w.bin"]["size"] = 1 << 50
        elif damage == "no time":
            del record["time"]
        storage.replace(key, dumps(record))
    assert points(shelf.repository, "net") == []
    assert "Skipping a resume point" in caplog.text
    assert keys_for(shelf.repository, "net").folder in key


def test_a_point_file_that_does_not_match_its_digest_is_refused(
    shelf: ms.Shelf, tmp_path: Path
) -> None:
    run_training(shelf, tmp_path, [1.0, 2.0, 3.0], kill_after=1)
    storage = shelf.repository.storage
    (key,) = [k for k in storage.find("resume") if k.endswith("/w.bin")]
    storage.replace(key, b"weights of someone else")
    (point,) = points(shelf.repository, "net")
    with pytest.raises(ms.IntegrityError, match=r"damaged 'w\.bin'"):
        point.path("w.bin")


def test_each_epochs_metrics_go_to_the_runs_history_and_summary(shelf: ms.Shelf) -> None:
    e = engine(shelf, monitor="val_loss", every_n_epochs=2)
    e.begin({}, is_writer=True)
    for epoch, value in enumerate([3.0, 2.0, 2.5]):
        metrics = {"val_loss": value, "acc": 1 / value}
        e.observe(metrics, epoch=epoch, step=10 * (epoch + 1))
        if e.due(epoch):
            d = e.check(metrics)
            e.commit(
                d, epoch=epoch, step=10 * (epoch + 1), metrics=metrics, snapshot=snapshot(epoch)
            )
    run = e.run
    e.end()
    (loaded,) = shelf.runs()
    assert loaded == run
    assert [(r["step"], r["epoch"], r["val_loss"]) for r in loaded.history()] == [
        (10, 0, 3.0),
        (20, 1, 2.0),
        (30, 2, 2.5),
    ]  # fmt: skip  (every epoch, checked or not)
    assert loaded.summary["val_loss"] == 2.5 and loaded.summary["epoch"] == 2


def test_a_point_whose_version_was_deleted_falls_back_to_latest(
    shelf: ms.Shelf, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run_training(shelf, tmp_path, [3.0, 2.0, 1.0], kill_after=1)  # the point names v1
    shelf.delete("net:v1", force=True)
    source = engine(shelf, monitor="val_loss", resume=True).resume_from()
    assert source == shelf.get("net:v0")
    assert "names v1, which was deleted since; resuming from net:v0 instead" in caplog.text
