"""The modelshelf command: tables, --json, exit codes, errors.

Commands run in-process (``cli``), through the same ``run`` the console script calls; the
installed ``modelshelf`` executable itself is run as a real subprocess where that is the point
(the entry point, ``--debug`` tracebacks, usage errors).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import modelshelf as ms
from modelshelf.cli.commands import run

EXE = shutil.which("modelshelf", path=str(Path(sys.executable).parent)) or "modelshelf"


def cli(*args: str, shelf: Path | str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
    """``modelshelf --shelf SHELF ARGS...`` in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    argv = ["--shelf", str(shelf), *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run(argv)
    proc = subprocess.CompletedProcess(["modelshelf", *argv], code, out.getvalue(), err.getvalue())
    if check is not None:
        assert proc.returncode == check, (args, proc.returncode, proc.stdout, proc.stderr)
    return proc


def test_the_installed_command_runs(tmp_path: Path) -> None:
    proc = subprocess.run(
        [EXE, "--shelf", str(tmp_path / "empty"), "ls", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and json.loads(proc.stdout) == [], proc.stderr
    usage = subprocess.run([EXE, "frobnicate"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "frobnicate" in usage.stderr


@pytest.fixture
def populated(tmp_path: Path) -> Path:
    shelf = ms.Shelf(tmp_path / "shelf")
    f = tmp_path / "m.txt"
    for i in range(3):
        f.write_text(f"model {i}")
        with shelf.run(config={"lr": 10.0**-i}) as run:
            run.log({"val_loss": 1.0 / (i + 1)})
            run.log_artifact(f, name="cnn", type="model", metadata={"epoch": i})
    return tmp_path / "shelf"


def test_read_commands_json(populated: Path, tmp_path: Path) -> None:
    assert [r["name"] for r in json.loads(cli("ls", "--json", shelf=populated).stdout)] == ["cnn"]
    versions = json.loads(cli("ls", "cnn", "--json", shelf=populated).stdout)
    assert [v["ref"] for v in versions] == ["cnn:v0", "cnn:v1", "cnn:v2"]
    shown = json.loads(cli("show", "cnn:v1", "--json", shelf=populated).stdout)
    # The run's latest metric is fixed on the version when it is logged.
    assert shown["metadata"] == {"epoch": 1, "metrics": {"epoch": 1, "val_loss": 0.5}}
    assert shown["files"]["m.txt"]["size"] == 7
    diff = json.loads(cli("diff", "cnn:v0", "cnn:v2", "--json", shelf=populated).stdout)
    assert diff["metadata"] == {"epoch": [0, 2]} and diff["config"]["lr"] == [1.0, 0.01]
    rows = json.loads(
        cli("compare", "cnn", "--metric", "val_loss", "--json", shelf=populated).stdout
    )
    assert [r["metrics"]["val_loss"] for r in rows] == [1.0, 0.5, pytest.approx(1 / 3)]
    runs = json.loads(cli("runs", "--json", shelf=populated).stdout)
    assert [r["status"] for r in runs] == ["finished"] * 3
    graph = json.loads(cli("lineage", "cnn:v1", "--json", shelf=populated).stdout)
    assert {n["kind"] for n in graph["nodes"]} == {"version", "run"}
    assert cli("lineage", "cnn:v1", "--format", "mermaid", shelf=populated).stdout.startswith(
        "graph LR"
    )
    assert "digraph" in cli("lineage", "cnn:v1", "--format", "dot", shelf=populated).stdout
    checks = json.loads(cli("verify", "--json", shelf=populated).stdout)
    assert [c["ok"] for c in checks] == [True] * 3


def test_tables_for_people(populated: Path) -> None:
    table = cli("ls", "cnn", shelf=populated).stdout
    assert "cnn:v2" in table and "latest" in table
    assert "val_loss" in cli("compare", "cnn", shelf=populated).stdout
    assert "diff cnn:v0 -> cnn:v1" in cli("diff", "cnn:v0", "cnn:v1", shelf=populated).stdout


def test_write_commands(populated: Path, tmp_path: Path) -> None:
    cli("alias", "cnn:v1", "best", shelf=populated)
    cli("tag", "cnn:best", "reviewed", "good", shelf=populated)
    shelf = ms.Shelf(populated)
    assert shelf.get("cnn:best").version == 1 and shelf.get("cnn:v1").tags == ["good", "reviewed"]
    cli("unalias", "cnn:v1", "best", shelf=populated)
    assert "best" not in shelf.get("cnn:v1").aliases

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("x\n1\n")
    logged = json.loads(
        cli("log", str(data), "--name", "digits", "--type", "dataset", "--alias", "train",
            "--metadata", '{"rows": 1}', "--json", shelf=populated).stdout
    )  # fmt: skip
    assert logged["ref"] == "digits:v0" and logged["aliases"] == ["latest", "train"]
    folder = Path(
        cli("download", "digits:train", "-o", str(tmp_path / "out"), shelf=populated).stdout.strip()
    )
    assert (folder / "a.csv").read_text() == "x\n1\n"

    cli("rm", "cnn:v0", shelf=populated)
    pruned = json.loads(cli("prune", "cnn", "--keep-last", "1", "--json", shelf=populated).stdout)
    assert pruned["deleted"] == ["cnn:v1"]
    report = json.loads(cli("gc", "--grace", "0", "--json", shelf=populated).stdout)
    assert report["blobs"] == 2
    target = tmp_path / "other"
    copied = json.loads(
        cli("copy", "digits", "--to", str(target), "--aliases", "--json", shelf=populated).stdout
    )
    assert copied[0]["aliases"] == ["latest", "train"]
    info = json.loads(cli("cache", "info", "--json", shelf=populated).stdout)
    assert info["blobs"] >= 1
    assert "freed" in cli("cache", "prune", "--max-bytes", "0", shelf=populated).stdout
    assert json.loads(cli("cache", "info", "--json", shelf=populated).stdout)["bytes"] == 0


def test_errors_are_one_line_with_status_1(populated: Path) -> None:
    for args, expected in [
        (("show", "cnn:bad alias"), "Invalid reference 'cnn:bad alias'"),
        (("show", "nope"), "No artifact named 'nope'"),
        (("show", "cnn:prod"), "has no alias 'prod'"),
        (("rm", "cnn:v9"), "v9 does not exist"),
        (("alias", "cnn:v1", "v7"), "Invalid alias 'v7'"),
    ]:
        proc = cli(*args, shelf=populated, check=1)
        assert proc.stderr.startswith("error: ") and expected in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    debug = subprocess.run(
        [EXE, "--shelf", str(populated), "--debug", "show", "nope"], capture_output=True, text=True
    )
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_usage_errors_exit_2(populated: Path) -> None:
    assert cli("frobnicate", shelf=populated, check=2).returncode == 2
    assert cli("prune", "cnn", shelf=populated, check=2).returncode == 2  # --keep-last missing
    assert cli("lineage", "cnn", "--format", "png", shelf=populated, check=2).returncode == 2


def test_verify_exits_1_on_corruption(populated: Path) -> None:
    shelf = ms.Shelf(populated)
    digest = shelf.get("cnn:v1").files["m.txt"].digest
    assert digest is not None
    blob = populated / "blobs" / "sha256" / digest[7:9] / digest[7:]
    blob.write_text("tampered")
    proc = cli("verify", shelf=populated, check=1)
    assert "BAD cnn:v1" in proc.stdout and "2 ok, 1 bad" in proc.stdout


def test_rm_of_a_bare_name_refuses_and_all_deletes_the_artifact(populated: Path) -> None:
    refused = cli("rm", "cnn", shelf=populated, check=1)
    assert "rm cnn:vN" in refused.stderr and "rm cnn --all" in refused.stderr
    assert len(ms.Shelf(populated).versions("cnn")) == 3  # nothing deleted
    with pytest.raises(ms.InvalidArgumentError, match="all_versions=True"):
        ms.Shelf(populated).delete("cnn")
    ms.Shelf(populated).get("cnn:v1").set_alias("production")
    gone = json.loads(cli("rm", "cnn", "--all", "--json", shelf=populated).stdout)
    assert gone["deleted"] == ["cnn:v0", "cnn:v1", "cnn:v2"]
    shelf = ms.Shelf(populated)
    assert (
        shelf.versions("cnn") == []
        and json.loads(cli("ls", "--json", shelf=populated).stdout) == []
    )
    with pytest.raises(ms.NotFoundError):
        shelf.get("cnn:production")


def test_prune_older_than_unused_and_dry_run(populated: Path, tmp_path: Path) -> None:
    shelf = ms.Shelf(populated)
    with shelf.run(job_type="evaluate") as run:
        run.use("cnn:v0")  # used: never "unused"
    dry = json.loads(cli("prune", "cnn", "--unused", "--dry-run", "--json", shelf=populated).stdout)
    assert dry["deleted"] == ["cnn:v1"]  # v0 was used, v2 holds latest
    assert dry["gc_would_free"] == shelf.get("cnn:v1").size
    assert len(shelf.versions("cnn")) == 3  # a dry run deletes nothing
    none = json.loads(cli("prune", "cnn", "--older-than", "30d", "--json", shelf=populated).stdout)
    assert none["deleted"] == []  # all are minutes old
    text = cli(
        "prune", "cnn", "--older-than", "0s", "--keep-last", "1", "--dry-run", shelf=populated
    )
    assert (
        "would delete 2 version(s): cnn:v0, cnn:v1" in text.stdout
        and "gc would then free" in text.stdout
    )
    assert cli("prune", "cnn", "--older-than", "soon", shelf=populated, check=2).returncode == 2
    json.loads(cli("prune", "cnn", "--unused", "--json", shelf=populated).stdout)
    assert [v.ref for v in shelf.versions("cnn")] == ["cnn:v0", "cnn:v2"]


def test_describe_meta_best_and_aliases(populated: Path) -> None:
    described = json.loads(
        cli("describe", "cnn:v1", "the good one", "--json", shelf=populated).stdout
    )
    assert described["description"] == "the good one"
    meta = json.loads(
        cli("meta", "cnn:v1", "owner=ana", "score=0.5", "tags=[1, 2]", "--json",
            shelf=populated).stdout
    )  # fmt: skip
    assert meta["metadata"]["owner"] == "ana" and meta["metadata"]["score"] == 0.5
    assert meta["metadata"]["tags"] == [1, 2]
    unset = json.loads(cli("meta", "cnn:v1", "--unset", "owner", "--json", shelf=populated).stdout)
    assert "owner" not in unset["metadata"]  # removed, not set to null
    assert "owner" not in ms.Shelf(populated).get("cnn:v1").metadata
    lowest = json.loads(cli("best", "cnn", "val_loss", "--json", shelf=populated).stdout)
    assert lowest == {"ref": "cnn:v2", "metric": "val_loss", "value": 1 / 3, "aliases": ["latest"]}
    highest = cli("best", "cnn", "val_loss", "--max", shelf=populated).stdout
    assert highest.startswith("cnn:v0  val_loss=1")
    cli("alias", "cnn:v0", "production", shelf=populated)
    cli("alias", "cnn:v1", "production", shelf=populated)
    held = json.loads(cli("aliases", "cnn", "--json", shelf=populated).stdout)
    assert held == {"latest": "cnn:v2", "production": "cnn:v1"}
    moves = json.loads(cli("aliases", "cnn", "--history", "--json", shelf=populated).stdout)
    production = [(m["from"], m["to"]) for m in moves if m["alias"] == "production"]
    assert production == [(None, "v0"), ("v0", "v1")]
    assert "production" in cli("aliases", "cnn", "--history", shelf=populated).stdout


def test_compare_across_names_sorted(populated: Path, tmp_path: Path) -> None:
    shelf = ms.Shelf(populated)
    f = tmp_path / "other.txt"
    f.write_text("other")
    shelf.log_artifact(f, name="rnn", type="model", metadata={"metrics": {"val_loss": 0.4}})
    rows = json.loads(
        cli("compare", "cnn:v0", "rnn", "cnn:v2", "--sort", "val_loss", "--json",
            shelf=populated).stdout
    )  # fmt: skip
    assert [r["ref"] for r in rows] == ["cnn:v2", "rnn:v0", "cnn:v0"]
    desc = json.loads(
        cli("compare", "cnn", "--sort", "val_loss", "--desc", "--json", shelf=populated).stdout
    )
    assert [r["ref"] for r in desc] == ["cnn:v0", "cnn:v1", "cnn:v2"]
    bad = cli("compare", "cnn", "--sort", "nope", shelf=populated, check=2)
    assert "val_loss" in bad.stderr


def test_runs_sorted_and_one_run_with_sparklines(populated: Path) -> None:
    shelf = ms.Shelf(populated)
    with shelf.run(config={"lr": 0.5}) as run:
        for step, loss in enumerate([1.0, 0.5, 0.25, 0.125]):
            run.log({"loss": loss}, step=step)
        run.use("cnn:v0")
    ranked = json.loads(cli("runs", "--sort", "val_loss", "--json", shelf=populated).stdout)
    assert [r["summary"].get("val_loss") for r in ranked] == [1 / 3, 0.5, 1.0, None]
    shown = cli("run", run.id, shelf=populated).stdout
    assert f"run {run.id}" in shown and '"lr": 0.5' in shown
    assert "loss" in shown and "█" in shown and "▁" in shown
    assert "inputs: cnn:v0" in shown
    data = json.loads(cli("run", run.id, "--json", shelf=populated).stdout)
    assert [row["loss"] for row in data["history"]] == [1.0, 0.5, 0.25, 0.125]
    assert data["inputs"] == ["cnn:v0"]


def test_shelf_text_is_never_taken_for_markup(populated: Path, tmp_path: Path) -> None:
    shelf = ms.Shelf(populated)
    v = shelf.get("cnn:v1").update_metadata({"input_shape": [None, 28, 28, 1], "note": "[bold]x"})
    v.set_description("[red]not red[/red]")
    shown = cli("show", "cnn:v1", shelf=populated).stdout
    assert '"input_shape": [null, 28, 28, 1]' in shown and '"note": "[bold]x"' in shown
    assert "[red]not red[/red]" in shown


def test_ls_keeps_refs_whole_at_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    f = tmp_path / "m.bin"
    for i in range(3):
        f.write_bytes(bytes([i]))
        shelf.log_artifact(
            f, name="mnist-convnet-experiment-long", type="model",
            aliases=[f"candidate-{i}", "production"] if i == 1 else [], tags=["a-long-tag"] * 1,
        )  # fmt: skip
    from modelshelf.cli import commands

    monkeypatch.setattr(commands.out, "width", 80)  # a terminal 80 columns wide
    text = cli("ls", "mnist-convnet-experiment-long", shelf=tmp_path / "shelf").stdout
    for i in range(3):
        assert f"mnist-convnet-experiment-long:v{i}" in text
    assert max(len(line) for line in text.splitlines()) <= 80
