"""Every example runs as a user would run it, and leaves on the shelf what it says it does.

The autouse fixture in conftest points $MODELSHELF_ROOT and $MODELSHELF_CACHE at a fresh
folder, so the examples' default shelf is each test's own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import modelshelf as ms

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def example(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``examples/<script>.py`` in a fresh interpreter, as ``python examples/...`` does."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{script}.py"), *args],
        env=os.environ.copy(), capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc


def printed(out: str, label: str = "test accuracy") -> float:
    """The number printed after ``label`` (the last one, when printed more than once)."""
    return float(re.findall(rf"{label} ([0-9.]+)", out)[-1])


def test_core_demo_runs_twice_and_adds_versions() -> None:
    for _ in range(2):
        assert "verified every byte" in example("core_demo").stdout
    shelf = ms.shelf()
    versions = shelf.versions("demo-model")
    assert [v.version for v in versions] == [0, 1, 2, 3]
    assert shelf.get("demo-model:best").version == 3
    assert versions[0].files["weights.bin"] == versions[1].files["weights.bin"]
    assert "demo" in shelf.get("demo-model:best").tags


@pytest.mark.slow
def test_make_demo_trains_versions_and_reloads_twice() -> None:
    for _ in range(2):
        out = example("demo").stdout
        assert printed(out) > 0.5  # chance is 0.1
        assert "tensors in model.safetensors" in out and "--logged--> digits-cnn:" in out
    shelf = ms.shelf()
    versions = shelf.versions("digits-cnn")
    assert len(versions) == 12  # six epochs, twice
    best = shelf.get("digits-cnn:best")
    assert best.metadata["monitored_value"] == min(  # the best of both trainings
        v.metadata["monitored_value"] for v in versions
    )
    assert best.metadata["model"]["recipe"]["class"] == "digits_nets:DigitsCNN"  # importable
    assert [v.version for v in shelf.versions("digits")] == [0]  # the same data, logged once
    assert "epoch" not in shelf.compare("digits-cnn")[0]["metrics"]  # bookkeeping, not a metric


@pytest.mark.slow
def test_lightning_quickstart_then_inference_by_alias() -> None:
    out = example("lightning_quickstart").stdout
    shelf = ms.shelf()
    versions = shelf.versions("digits-cnn")
    best = shelf.get("digits-cnn:best")
    assert 1 <= len(versions) <= 3  # keep_last=3
    assert best.version == versions[-1].version and "latest" in best.aliases  # improved only
    val = [v.metadata["metrics"]["val_acc"] for v in versions]
    assert val == sorted(val) and f"val_acc={val[-1]:.3f}" in out
    trained = printed(out)
    assert trained > 0.5

    out = example("inference").stdout  # a new process: the class is imported, not pickled
    assert f"digits-cnn:best -> {best.ref} (torch," in out
    assert printed(out) == trained  # the same weights on the same test split

    first = versions[0].ref
    shelf.get(first).set_alias("production")
    out = example("inference", "digits-cnn:production").stdout
    assert f"digits-cnn:production -> {first} " in out

    missing = example("inference", "digits-cnn:staging", check=False)
    assert missing.returncode == 1
    assert "staging" in missing.stderr and "lightning_quickstart.py" in missing.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "name", "metric", "framework"),
    [
        ("keras_quickstart", "digits-keras", "val_accuracy", "keras"),
        ("fastai_quickstart", "digits-mlp", "accuracy", "fastai"),
    ],
)
def test_framework_quickstart_then_inference(
    script: str, name: str, metric: str, framework: str
) -> None:
    out = example(script).stdout
    shelf = ms.shelf()
    versions = shelf.versions(name)
    assert 1 <= len(versions) <= 3  # keep_last=3
    best = shelf.get(f"{name}:best")
    assert best.version == versions[-1].version and "latest" in best.aliases
    values = [v.metadata["metrics"][metric] for v in versions]
    assert values == sorted(values) and f"{metric}={values[-1]:.3f}" in out
    assert best.metadata["model"]["format"] == framework
    trained = printed(out)
    assert trained > 0.5

    out = example("inference", f"{name}:best").stdout
    assert f"{name}:best -> {best.ref} ({framework}," in out
    assert abs(printed(out) - trained) < 1e-9


@pytest.mark.slow
def test_pipeline_lineage_compare_and_promotion() -> None:
    out = example("pipeline").stdout
    shelf = ms.shelf()
    candidates = shelf.versions("digits-classifier")
    assert len(candidates) == 2
    scores = {v.ref: v.metadata["metrics"]["test_acc"] for v in candidates}
    production = shelf.get("digits-classifier:production")
    assert scores[production.ref] == max(scores.values()) > 0.5
    assert f"promoted {production.ref} to production" in out
    assert out.count(" finished: {'batch_size': 64, 'epochs': 25, 'hidden': ") == 2  # both runs
    assert [e.version for e in shelf.alias_history("digits-classifier", "production")] == [
        production.version
    ]

    predictions = shelf.versions("digits-predictions")
    assert sorted(p.metadata["model"] for p in predictions) == sorted(scores)
    dataset = shelf.get("digits:v0")
    assert {r.job_type for r in dataset.used_by()} == {"train", "evaluate"}
    trainer = production.logged_by()
    assert trainer is not None and trainer.config["hidden"] in (16, 64)
    assert [i.ref for i in trainer.inputs()] == ["digits:v0"]
    assert len(trainer.history()) == 25  # one row of val metrics per epoch

    graph = shelf.lineage(production.ref).to_dict()
    kinds = {n.get("type") or n.get("kind") for n in graph["nodes"]}
    assert {"dataset", "model", "predictions"} <= kinds, graph
    assert out.count("-->|") == len(graph["edges"])  # the printed Mermaid has every edge

    example("pipeline")  # again: the data is the same bytes, so still one dataset version
    assert [v.version for v in shelf.versions("digits")] == [0]
    best = max(shelf.versions("digits-classifier"), key=lambda v: v.metadata["metrics"]["test_acc"])
    assert (
        shelf.get("digits-classifier:production").metadata["metrics"]["test_acc"]
        == (best.metadata["metrics"]["test_acc"])
    )


@pytest.mark.slow
def test_resume_after_preemption_continues_where_it_stopped() -> None:
    out = example("resume").stdout
    assert "first launch: killed (exit code -9)" in out
    shelf = ms.shelf()
    (name,) = [n for n in shelf.artifacts() if n.startswith("digits-resume-")]
    versions = shelf.versions(name)
    assert [v.metadata["epoch"] for v in versions] == list(range(8))  # no epoch twice or lost
    runs = [v.logged_by() for v in versions]
    assert all(r is not None for r in runs)
    first, second = runs[0], runs[-1]
    assert first is not None and second is not None and first.id != second.id
    assert runs[:3] == [first] * 3 and runs[3:] == [second] * 5
    assert (first.status, second.status) == ("crashed", "finished")
    steps = [v.metadata["global_step"] for v in versions]
    assert steps == [19 * (e + 1) for e in range(8)]  # the loop counters came back too


@pytest.mark.slow
def test_team_sharing_over_s3() -> None:
    pytest.importorskip("moto")
    out = example("s3_team").stdout
    published = re.search(r"-> (digits-classifier:v\d+) on s3://team-models/shelf", out)
    assert published, out
    loaded = re.search(r"bob: loaded (\S+) from s3://team-models/shelf; test accuracy", out)
    assert loaded and loaded.group(1) == published.group(1)
    assert printed(out) > 0.5
    assert re.search(rf"{published.group(1)} was used by inference run \S+ on ", out)
    laptop = ms.shelf()  # Alice's own shelf keeps her copy
    alice_acc = laptop.get("digits-classifier:latest").metadata["metrics"]["test_acc"]
    assert f"{alice_acc:.3f}" == f"{printed(out):.3f}"  # Bob's copy predicts as Alice's did


README_SETUP = """
import os, sys
sys.path.insert(0, {examples!r})
from digits_nets import DigitsCNN, loaders
model = DigitsCNN()
train_loader, val_loader = loaders()
os.makedirs("data/digits")
with open("data/digits/labels.txt", "w") as f:
    f.write("0 1 2 3 4 5 6 7 8 9")
"""


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path: Path, s3_endpoint: str) -> None:
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("team-models", exist_ok=True)
    readme = (REPO / "README.md").read_text()
    (quick_start,) = re.findall(r"## Quick start\n\n```python\n(.*?)```", readme, re.S)
    assert len(quick_start.strip().splitlines()) <= 15
    script = tmp_path / "quick_start.py"
    script.write_text(README_SETUP.format(examples=str(EXAMPLES)) + quick_start)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=os.environ.copy(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "tensors in model.safetensors" in proc.stdout  # the printed diff
    shelf = ms.shelf()
    assert shelf.get("digits-cnn:production").version == shelf.get("digits-cnn:best").version
    accs = [v.metadata["metrics"]["val_acc"] for v in shelf.versions("digits-cnn")]
    assert shelf.get("digits-cnn:best").metadata["metrics"]["val_acc"] == max(accs)
    team = ms.Shelf("s3://team-models/shelf")
    assert "labels.txt" in team.get("digits:latest").files
