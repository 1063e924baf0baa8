"""Renaming an artifact: everything follows the new name, the old one says where it went, and
neither a kill at any point nor a concurrent writer loses a version."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import modelshelf as ms
from conftest import CHILD_PRELUDE, make_url
from modelshelf._format.layout import ArtifactKeys
from modelshelf._format.records import dumps
from test_cli import cli


def _fill(shelf: ms.Shelf, tmp_path: Path, name: str = "old") -> ms.Run:
    """Three versions of ``name`` logged by a run, one used by another run, with aliases moved
    twice, tags, a description and metadata."""
    path = tmp_path / "w.bin"
    with shelf.run(job_type="train", config={"lr": 0.1}) as run:
        for i in range(3):
            path.write_bytes(f"weights {i}".encode())
            run.log({"acc": 0.5 + i / 10})
            shelf.log_artifact(path, name=name, type="model", run=run)
    shelf.get(f"{name}:v1").set_alias("best")
    shelf.get(f"{name}:v2").set_alias("best")
    shelf.get(f"{name}:v0").add_tags("baseline")
    shelf.get(f"{name}:v2").set_description("the good one")
    shelf.get(f"{name}:v2").update_metadata({"dataset": "digits"})
    with shelf.run(job_type="evaluate") as ev:
        ev.use(f"{name}:best")
    return run


def _snapshot(shelf: ms.Shelf, name: str) -> dict[str, object]:
    """What a user sees of ``name``, with the name itself taken out."""
    versions = shelf.versions(name)
    history = shelf.alias_history(name)
    return {
        "versions": [(v.version, v.digest, v.type, sorted(v.aliases)) for v in versions],
        "tags": {v.version: v.tags for v in versions},
        "description": shelf.get(f"{name}:v2").description,
        "metadata": shelf.get(f"{name}:v2").metadata.get("dataset"),
        "history": [(e.alias, e.version, e.previous) for e in history],
        "logged_by": [v.logged_by().id if v.logged_by() else None for v in versions],
        "used_by": {v.version: [r.id for r in v.used_by()] for v in versions},
        "files": [shelf.get(f"{name}:v{v.version}").files for v in versions],
    }


def test_rename_keeps_everything_and_the_old_name_says_where_it_went(
    shelf: ms.Shelf, tmp_path: Path
) -> None:
    train = _fill(shelf, tmp_path)
    before = _snapshot(shelf, "old")
    shelf.rename("old", "new")

    assert _snapshot(shelf, "new") == before
    assert shelf.get("new:best").ref == "new:v2"
    assert [v.ref for v in train.outputs()] == ["new:v0", "new:v1", "new:v2"]
    eval_run = shelf.get("new:v2").used_by()[0]
    assert [v.ref for v in eval_run.inputs()] == ["new:v2"]
    graph = shelf.lineage("new:v2")
    assert f"run:{train.id}" in graph.nodes and f"run:{eval_run.id}" in graph.nodes
    assert shelf.artifacts() == ["new"] and shelf.artifacts(type="model") == ["new"]
    for v in shelf.versions("new"):
        v.verify()  # the bytes are where they were

    for call in (
        lambda: shelf.get("old"),
        lambda: shelf.get("old:v1"),
        lambda: shelf.versions("old"),
        lambda: shelf.alias_history("old"),
        lambda: shelf.log_artifact(tmp_path / "w.bin", name="old", type="model"),
    ):
        with pytest.raises(ms.NotFoundError, match="'old' was renamed to 'new'"):
            call()

    # The new name carries on: the next version is v3, and gc keeps every byte.
    (tmp_path / "w.bin").write_bytes(b"weights 3")
    v3 = shelf.log_artifact(tmp_path / "w.bin", name="new", type="model")
    assert v3.ref == "new:v3" and shelf.get("new").version == 3
    shelf.gc(grace_period=0)
    for v in shelf.versions("new"):
        v.verify()
    assert shelf.fsck().ok


def test_renames_chain_and_come_back(shelf: ms.Shelf, tmp_path: Path) -> None:
    _fill(shelf, tmp_path, "a")
    before = _snapshot(shelf, "a")
    shelf.rename("a", "b")
    shelf.rename("b", "c")
    with pytest.raises(ms.NotFoundError, match="'a' was renamed to 'c'"):
        shelf.get("a")
    with pytest.raises(ms.NotFoundError, match="'b' was renamed to 'c'"):
        shelf.get("b")
    assert _snapshot(shelf, "c") == before

    shelf.rename("c", "a")  # back to the first name
    assert _snapshot(shelf, "a") == before
    assert shelf.artifacts() == ["a"]
    with pytest.raises(ms.NotFoundError, match="'b' was renamed to 'a'"):
        shelf.get("b")
    shelf.rename("a", "b")  # and to a name it had in between
    assert _snapshot(shelf, "b") == before and shelf.artifacts() == ["b"]
    assert shelf.fsck().ok


def test_rename_refuses_what_it_cannot_do(shelf: ms.Shelf, tmp_path: Path) -> None:
    _fill(shelf, tmp_path, "a")
    (tmp_path / "d.csv").write_text("x\n1\n")
    shelf.log_artifact(tmp_path / "d.csv", name="taken", type="dataset")
    shelf.log_artifact(tmp_path / "d.csv", name="gone", type="dataset")
    shelf.delete("gone", all_versions=True)

    with pytest.raises(ms.ConflictError, match="'taken'"):
        shelf.rename("a", "taken")
    with pytest.raises(ms.ConflictError, match="'gone'"):
        shelf.rename("a", "gone")  # a deleted artifact keeps its name
    with pytest.raises(ms.NotFoundError, match="No artifact named 'nope'"):
        shelf.rename("nope", "b")
    with pytest.raises(ms.InvalidArgumentError):
        shelf.rename("a", "a")
    with pytest.raises(ms.InvalidReferenceError):
        shelf.rename("a", "../escape")
    with pytest.raises(ms.InvalidReferenceError):
        shelf.rename("a", "b:v1")
    # Nothing was touched by the refusals.
    assert shelf.artifacts() == ["a", "gone", "taken"]
    assert [v.version for v in shelf.versions("a")] == [0, 1, 2]
    assert shelf.get("taken").type == "dataset"

    shelf.rename("a", "proj/a")  # into a project
    assert [v.ref for v in shelf.versions("proj/a")] == ["proj/a:v0", "proj/a:v1", "proj/a:v2"]
    assert shelf.artifacts(project="proj") == ["proj/a"]


def test_a_training_follows_its_artifact_through_a_rename(shelf: ms.Shelf, tmp_path: Path) -> None:
    """A resume point left under the old name is found under the new one."""
    from modelshelf._core.sources import LocalFile
    from modelshelf._features.resume import points, write_point

    _fill(shelf, tmp_path, "net")
    (tmp_path / "state.bin").write_bytes(b"optimizer")
    run_id = shelf.get("net:v0").run_id
    assert run_id is not None
    write_point(
        shelf.repository, "net", run_id, epoch=4, global_step=40, version=None,
        files={"state.bin": LocalFile(tmp_path / "state.bin")}, state={}, model={},
    )  # fmt: skip
    shelf.rename("net", "net2")
    found = points(shelf.repository, "net2")
    assert [(p.run_id, p.epoch) for p in found] == [(run_id, 4)]
    assert found[0].path("state.bin").read_bytes() == b"optimizer"


def test_hostile_rename_records_are_refused(shelf: ms.Shelf, tmp_path: Path) -> None:
    _fill(shelf, tmp_path, "a")
    storage = shelf.repository.storage

    def pointer(name: str, target: str) -> None:
        info = {"name": name, "type": "model", "created_at": "2026-01-01T00:00:00+00:00",
                "stored_as": target, "renamed_from": target}  # fmt: skip
        storage.replace(ArtifactKeys(name).info, dumps(info))

    pointer("p1", "../../etc")
    pointer("p2", "nothing-here")
    pointer("p3", "p3")
    shelf.rename("a", "b")
    pointer("p4", "b")  # b is itself a pointer
    for name in ("p1", "p2", "p3", "p4"):
        with pytest.raises(ms.IntegrityError, match="tampered"):
            ms.Shelf(shelf.url).get(name)
    storage.replace(ArtifactKeys("x").renamed, dumps({"to": "y"}))
    storage.replace(ArtifactKeys("y").renamed, dumps({"to": "x"}))
    with pytest.raises(ms.IntegrityError, match="circle"):
        shelf.get("x")
    storage.replace(ArtifactKeys("z").renamed, dumps({"to": "../../z"}))
    with pytest.raises(ms.IntegrityError, match="no valid artifact"):
        shelf.get("z")
    # None of it reaches the real artifact, which gc and fsck still walk once.
    assert [v.version for v in shelf.versions("b")] == [0, 1, 2]
    shelf.gc(grace_period=0)
    for v in shelf.versions("b"):
        v.verify()


def test_two_renames_of_one_name_race_and_one_wins(shelf_url: str, tmp_path: Path) -> None:
    shelf = ms.Shelf(shelf_url)
    _fill(shelf, tmp_path, "a")
    outcome: dict[str, ms.ModelshelfError | None] = {}
    barrier = threading.Barrier(2)

    def rename(to: str) -> None:
        barrier.wait()
        try:
            ms.Shelf(shelf_url).rename("a", to)
            outcome[to] = None
        except (ms.ConflictError, ms.NotFoundError) as exc:
            outcome[to] = exc

    threads = [threading.Thread(target=rename, args=(to,)) for to in ("b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [to for to, exc in outcome.items() if exc is None]
    assert len(winners) == 1, outcome
    (winner,) = winners
    loser = "c" if winner == "b" else "b"
    fresh = ms.Shelf(shelf_url)
    assert fresh.artifacts() == [winner]
    assert [v.version for v in fresh.versions(winner)] == [0, 1, 2]
    with pytest.raises(ms.NotFoundError, match=f"'a' was renamed to '{winner}'"):
        fresh.get("a")
    error = outcome[loser]
    if isinstance(error, ms.ConflictError):  # they overlapped: the loser's name gives way
        assert "by another process" in str(error)
        with pytest.raises(ms.NotFoundError, match=f"'{loser}' was renamed to '{winner}'"):
            fresh.get(loser)
    else:  # the winner had finished before the loser looked
        assert f"'a' was renamed to '{winner}'" in str(error)
        with pytest.raises(ms.NotFoundError, match=f"No artifact named '{loser}'"):
            fresh.get(loser)


def test_cli_rename(tmp_path: Path) -> None:
    url = tmp_path / "shelf"
    _fill(ms.Shelf(url), tmp_path, "a")

    done = cli("rename", "a", "b", "--json", shelf=url)
    assert json.loads(done.stdout) == {"renamed": "a", "to": "b"}
    shown = cli("show", "a", shelf=url, check=1)
    assert "'a' was renamed to 'b'" in shown.stdout + shown.stderr
    assert [row["name"] for row in json.loads(cli("ls", "--json", shelf=url).stdout)] == ["b"]
    assert "renamed b to c" in cli("rename", "b", "c", shelf=url).stdout
    taken = cli("rename", "c", "c", shelf=url, check=None)
    assert taken.returncode != 0 and "itself" in taken.stdout + taken.stderr


# -- real kills --------------------------------------------------------------------------------
KILLER = (
    CHILD_PRELUDE
    + r"""
import os, signal, sys
import modelshelf as ms
url, kill_at = sys.argv[1], int(sys.argv[2])
shelf = ms.Shelf(url)
storage = shelf.repository.storage
writes = [0]

def kill_before(method):
    def write(*args, **kwargs):
        if writes[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        writes[0] += 1
        return method(*args, **kwargs)
    return write

for name in ("create", "replace", "delete", "move", "delete_many"):
    setattr(storage, name, kill_before(getattr(storage, name)))
shelf.rename(sys.argv[3], sys.argv[4])
print("finished after", writes[0], "writes")
"""
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_rename_killed_at_any_write_leaves_a_whole_name(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kills = 0
    for kill_at in range(10):
        url = make_url(backend, tmp_path / f"k{kill_at}", request)
        shelf = ms.Shelf(url)
        (tmp_path / f"k{kill_at}").mkdir(exist_ok=True)
        _fill(shelf, tmp_path / f"k{kill_at}", "a")
        before = _snapshot(shelf, "a")
        proc = subprocess.run(
            [sys.executable, "-c", KILLER, url, str(kill_at), "a", "b"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        fresh = ms.Shelf(url)
        if proc.returncode == 0:
            assert "finished" in proc.stdout
            assert _snapshot(fresh, "b") == before
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        kills += 1
        # Killed: the old name is whole, or the rename got far enough that the new one is.
        try:
            assert _snapshot(fresh, "a") == before
        except ms.NotFoundError as exc:
            assert "'a' was renamed to 'b'" in str(exc)
            assert _snapshot(fresh, "b") == before
        else:
            if "b" in fresh.artifacts():
                assert _snapshot(fresh, "b") == before  # both names reach the same versions
        # Running it again finishes the rename.
        with_rerun = ms.Shelf(url)
        try:
            with_rerun.rename("a", "b")
        except ms.NotFoundError as exc:
            assert "'a' was renamed to 'b'" in str(exc)  # it had finished all but returning
        assert _snapshot(with_rerun, "b") == before
        assert with_rerun.artifacts() == ["b"]
        with pytest.raises(ms.NotFoundError, match="'a' was renamed to 'b'"):
            with_rerun.get("a")
        assert with_rerun.fsck().ok
    else:
        pytest.fail("the rename never finished")
    assert kills >= 2  # before the pointer, between pointer and tombstone (and more)


WRITER = (
    CHILD_PRELUDE
    + r"""
import json, os, sys, time
import modelshelf as ms
url, folder = sys.argv[1], sys.argv[2]
shelf = ms.Shelf(url)
for i in range(500):
    path = os.path.join(folder, f"w{i}.bin")
    with open(path, "wb") as f:
        f.write(f"log {i}\n".encode() + os.urandom(1024))
    try:
        v = shelf.log_artifact(path, name="a", type="model")
    except ms.NotFoundError as exc:
        print(json.dumps({"stopped": str(exc)}), flush=True)
        break
    print(json.dumps({"ref": v.ref, "digest": v.digest, "file": path}), flush=True)
"""
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_writer_to_the_old_name_lands_under_the_new_one_or_stops_clearly(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = make_url(backend, tmp_path, request)
    shelf = ms.Shelf(url)
    (tmp_path / "seed.bin").write_bytes(b"seed")
    shelf.log_artifact(tmp_path / "seed.bin", name="a", type="model")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = []
    while len(lines) < 3:  # let it get going, then rename under it
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else "the writer died"
        lines.append(json.loads(line))
    shelf.rename("a", "b")
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines += [json.loads(line) for line in rest.splitlines()]

    assert "stopped" in lines[-1] and "'a' was renamed to 'b'" in lines[-1]["stopped"]
    logged = lines[:-1]
    versions = {v.version: v for v in shelf.versions("b")}
    assert sorted(versions) == list(range(len(logged) + 1))  # the seed, then each log
    for entry in logged:
        name, _, number = entry["ref"].partition(":v")
        assert name in ("a", "b")  # one committing across the rename is handed back as b
        version = versions[int(number)]
        assert version.digest == entry["digest"]
        assert (
            Path(version.download(tmp_path / "out" / number))
            .joinpath(Path(entry["file"]).name)
            .read_bytes()
            == Path(entry["file"]).read_bytes()
        )
    assert ms.Shelf(url).fsck().ok
