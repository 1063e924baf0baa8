"""Runs and lineage: a whole pipeline, failed and crashed runs, metric history."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelshelf as ms
from conftest import CHILD_PRELUDE


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_pipeline_lineage_both_ways(shelf: ms.Shelf, tmp_path: Path) -> None:
    data = shelf.log_artifact(
        _write(tmp_path / "digits.csv", "x,y\n1,2\n"), name="digits", type="dataset"
    )
    with shelf.run(
        "train-1", job_type="train", config={"lr": 0.1, "model": {"width": 64}}
    ) as train:
        assert train.use("digits:v0") == data
        for epoch in range(3):
            train.log({"loss": 1.0 / (epoch + 1), "acc": 0.5 + epoch / 10})
        m0 = train.log_artifact(_write(tmp_path / "m.bin", "weights 0"), name="cnn", type="model")
        m1 = train.log_artifact(
            _write(tmp_path / "m.bin", "weights 1"), name="cnn", type="model", aliases=["best"]
        )
    with shelf.run(job_type="eval") as evaluation:
        evaluation.use("cnn:best")
        evaluation.use("digits:v0")
        evaluation.log({"test_acc": 0.91})
        preds = evaluation.log_artifact(
            _write(tmp_path / "p.csv", "id,pred\n1,7\n"), name="preds", type="predictions"
        )

    assert train.status == "finished" and evaluation.status == "finished"
    assert m1.logged_by() == train and preds.logged_by() == evaluation
    assert [r.id for r in data.used_by()] == [train.id, evaluation.id]
    assert [v.ref for v in train.outputs()] == ["cnn:v0", "cnn:v1"]
    assert [v.ref for v in evaluation.inputs()] == ["cnn:v1", "digits:v0"]
    assert m0.used_by() == []

    fresh = ms.Shelf(shelf.url).get_run(train.id)
    assert fresh.config == {"lr": 0.1, "model": {"width": 64}}
    assert [row["loss"] for row in fresh.history()] == [1.0, 0.5, 1 / 3]
    assert [row["step"] for row in fresh.history()] == [0, 1, 2]
    assert fresh.summary["acc"] == pytest.approx(0.7)
    env = fresh.environment
    assert env["host"] and env["pid"] == os.getpid() and env["python"].count(".") == 2
    assert "modelshelf" in env["packages"] and env["argv"]
    assert set(env["git"]) in ({"commit", "dirty", "root"}, set())
    assert fresh.started_at <= fresh.ended_at  # type: ignore[operator]

    up = shelf.lineage("preds:v0", direction="upstream")
    assert set(up.nodes) == {
        "preds:v0",
        f"run:{evaluation.id}",
        "cnn:v1",
        "digits:v0",
        f"run:{train.id}",
    }
    assert (f"run:{train.id}", "cnn:v1", "logged") in up.edges
    assert ("digits:v0", f"run:{train.id}", "used") in up.edges
    down = shelf.lineage("digits:v0", direction="downstream")
    assert set(down.nodes) == {
        "digits:v0",
        f"run:{train.id}",
        f"run:{evaluation.id}",
        "cnn:v0",
        "cnn:v1",
        "preds:v0",
    }
    assert set(shelf.lineage("digits:v0", direction="downstream", depth=1).nodes) == {
        "digits:v0",
        f"run:{train.id}",
        f"run:{evaluation.id}",
    }
    both = shelf.lineage("cnn:v1")
    assert f"run:{train.id}" in both.nodes and "preds:v0" in both.nodes
    assert "cnn:v0" not in both.nodes  # a sibling, neither upstream nor downstream

    _check_dot(down.to_dot(), down)
    _check_mermaid(down.to_mermaid(), down)
    as_dict = down.to_dict()
    assert {n["id"] for n in as_dict["nodes"]} == set(down.nodes)
    assert len(as_dict["edges"]) == len(down.edges) == 6


def _check_dot(source: str, graph: ms.Lineage) -> None:
    pydot = pytest.importorskip("pydot")
    (parsed,) = pydot.graph_from_dot_data(source)
    names = {n.get_name().strip('"') for n in parsed.get_nodes()} - {"node", "edge", "graph"}
    assert names == set(graph.nodes)
    edges = {
        (e.get_source().strip('"'), e.get_destination().strip('"')) for e in parsed.get_edges()
    }
    assert edges == {(a, b) for a, b, _ in graph.edges}


def _check_mermaid(source: str, graph: ms.Lineage) -> None:
    """A strict reading of the flowchart subset we emit: every line is a header, node or edge."""
    lines = source.strip().splitlines()
    assert lines[0] == "graph LR"
    nodes, edges = {}, set()
    for line in lines[1:]:
        if m := re.fullmatch(r'  (n\d+)\["([^"]*)"\]', line) or re.fullmatch(
            r'  (n\d+)\(\["([^"]*)"\]\)', line
        ):
            nodes[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"  (n\d+) -->\|(used|logged)\| (n\d+)", line):
            assert m.group(1) in nodes and m.group(3) in nodes
            edges.add((m.group(1), m.group(3)))
        else:
            raise AssertionError(f"not valid Mermaid flowchart syntax: {line!r}")
    assert len(nodes) == len(graph.nodes) and len(edges) == len(graph.edges)


def test_exception_marks_run_failed(shelf: ms.Shelf) -> None:
    with pytest.raises(RuntimeError, match="diverged"), shelf.run() as run:
        run.log({"loss": 1.0})
        raise RuntimeError("loss diverged")
    again = shelf.get_run(run.id)
    assert again.status == "failed" and again.error == "RuntimeError: loss diverged"
    assert again.history()[0]["loss"] == 1.0
    assert [r.id for r in shelf.runs(status="failed")] == [run.id]


def test_finished_run_cannot_be_changed(shelf: ms.Shelf) -> None:
    with shelf.run() as run:
        pass
    with pytest.raises(ms.ModelshelfError, match="finished"):
        run.log({"x": 1})
    with pytest.raises(ms.InvalidMetadataError, match="not a number"), shelf.run() as other:
        other.log({"name": "text"})


def test_unknown_run_lists_recent_ones(shelf: ms.Shelf) -> None:
    with shelf.run() as run:
        pass
    with pytest.raises(ms.NotFoundError, match=run.id):
        shelf.get_run("20200101-000000-abcdef")


RUNNER = r"""
import sys, time
import modelshelf as ms
run = ms.Shelf(sys.argv[1]).run(job_type="train")
run.__enter__()
run.log({"loss": 0.5})
run.flush()
print(run.id, flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_sigkilled_run_is_crashed(shelf_url: str) -> None:
    if shelf_url.startswith("memory://"):
        pytest.skip("a memory:// shelf lives in one process")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_PRELUDE + RUNNER, shelf_url], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    shelf = ms.Shelf(shelf_url)
    assert shelf.get_run(run_id).status == "running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while shelf.get_run(run_id).status != "crashed":
        assert time.monotonic() < deadline, "the dead run was not seen as crashed"
        time.sleep(0.1)
    crashed = shelf.get_run(run_id)
    assert crashed.history()[0]["loss"] == 0.5
    assert [r.id for r in shelf.runs(status="crashed")] == [run_id]


def test_run_on_another_host_is_crashed_once_its_heartbeat_is_stale(shelf: ms.Shelf) -> None:
    from modelshelf._format.records import dumps, isoformat, loads, now

    with shelf.run() as run:
        pass
    storage = shelf.repository.storage
    record = loads(storage.read(f"runs/{run.id}/run.json"), "run")
    record["environment"]["host"] = "another-machine"
    elsewhere = "20200101-000000-0e1e2e"
    record["id"] = elsewhere
    storage.create(f"runs/{elsewhere}/run.json", dumps(record))
    storage.replace(f"runs/{elsewhere}/heartbeat", b"2020-01-01T00:00:00+00:00")
    assert shelf.get_run(elsewhere).status == "crashed"
    fresh = isoformat(now()).encode()
    storage.replace(f"runs/{elsewhere}/heartbeat", fresh)
    assert shelf.get_run(elsewhere).status == "running"


def test_a_versions_metrics_are_the_runs_values_when_it_was_logged(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    f = tmp_path / "m.bin"
    with shelf.run() as run:
        run.log({"acc": 0.6}, step=0)
        f.write_bytes(b"0")
        run.log_artifact(f, name="m", type="model")
        run.log({"acc": 0.7}, step=1)
        f.write_bytes(b"1")
        run.log_artifact(f, name="m", type="model", metadata={"acc": 0.75, "note": "x"})
        run.log({"acc": 0.9}, step=2)  # the final summary belongs to no version
    assert [r["metrics"] for r in shelf.compare("m")] == [{"acc": 0.6}, {"acc": 0.75}]
    assert shelf.best("m", "acc", mode="max").ref == "m:v1"
    assert shelf.diff("m:v0", "m:v1").metrics == {"acc": (0.6, 0.75)}
    assert shelf.get_run(run.id).summary["acc"] == 0.9


def test_runs_are_ranked_by_a_summary_metric(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    for acc in (0.7, 0.9, None, 0.8):
        with shelf.run() as run:
            if acc is not None:
                run.log({"val_acc": acc})
    best_first = shelf.runs(order_by="val_acc", descending=True)
    assert [r.summary.get("val_acc") for r in best_first] == [0.9, 0.8, 0.7, None]
    assert [r.summary.get("val_acc") for r in shelf.runs(order_by="val_acc")] == [
        0.7, 0.8, 0.9, None,
    ]  # fmt: skip
    started = shelf.runs()
    assert started == sorted(started, key=lambda r: r.started_at)
