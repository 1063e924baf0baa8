"""Automation: Shelf.watch and `modelshelf watch --exec`, with real processes and kills."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import modelshelf as ms

EXE = shutil.which("modelshelf", path=str(Path(sys.executable).parent)) or "modelshelf"


def log(shelf: ms.Shelf, tmp: Path, name: str, content: str) -> ms.ArtifactVersion:
    f = tmp / "file.bin"
    f.write_text(content)
    return shelf.log_artifact(f, name=name, type="model")


def test_watch_fires_once_per_new_version_from_now_on(shelf: ms.Shelf, tmp_path: Path) -> None:
    log(shelf, tmp_path, "m", "before")  # there before the watcher: not an event
    seen: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        time.sleep(0.3)
        for i in range(3):
            log(shelf, tmp_path, "m", f"new {i}")
        shelf.delete("m:v2")  # deleted before it was seen, maybe: never fired twice

    thread = threading.Thread(target=writer)
    thread.start()
    fired = shelf.watch("m", lambda v: seen.append(v.ref), poll=0.05, max_events=2, stop=stop)
    thread.join()
    assert fired == 2 and seen[0] == "m:v1" and seen[1] in ("m:v2", "m:v3")


def test_watch_an_alias_fires_on_each_move(shelf: ms.Shelf, tmp_path: Path) -> None:
    for i in range(3):
        log(shelf, tmp_path, "m", str(i))
    seen: list[str] = []

    def promote() -> None:
        time.sleep(0.3)
        shelf.get("m:v0").set_alias("production")
        shelf.get("m:v1").set_alias("staging")  # another alias: not an event
        shelf.get("m:v2").set_alias("production")

    thread = threading.Thread(target=promote)
    thread.start()
    shelf.watch("m", lambda v: seen.append(v.ref), alias="production", poll=0.05, max_events=2)
    thread.join()
    assert seen == ["m:v0", "m:v2"]


def test_a_cursor_goes_on_after_the_last_handled(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    cursor = tmp_path / "cursor.json"
    log(shelf, tmp_path, "m", "0")
    stop = threading.Event()
    stop.set()  # just record where we start
    assert shelf.watch("m", print, cursor=cursor, stop=stop) == 0
    log(shelf, tmp_path, "m", "1")
    log(shelf, tmp_path, "m", "2")
    seen: list[str] = []
    shelf.watch("m", lambda v: seen.append(v.ref), cursor=cursor, poll=0.05, max_events=1)
    shelf.watch("m", lambda v: seen.append(v.ref), cursor=cursor, poll=0.05, max_events=1)
    assert seen == ["m:v1", "m:v2"]
    cursor.write_text("not json")
    with pytest.raises(ms.InvalidArgumentError, match="cannot be read"):
        shelf.watch("m", print, cursor=cursor, max_events=1)
    with pytest.raises(ms.InvalidArgumentError, match="poll"):
        shelf.watch("m", print, poll=0)


def written_later(record: Path) -> threading.Thread:
    """Cut ``record`` to half, as a reader sees a create in progress, and write it whole again
    0.4 s later, on the thread returned."""
    whole = record.read_bytes()
    record.write_bytes(whole[: len(whole) // 2])

    def finish_writing() -> None:
        time.sleep(0.4)
        record.write_bytes(whole)

    thread = threading.Thread(target=finish_writing)
    thread.start()
    return thread


def test_a_version_being_written_is_waited_for(tmp_path: Path) -> None:
    """A commit record that does not decode yet (being written) is not skipped: the version is
    called back once it reads whole, and in order."""
    shelf = ms.Shelf(tmp_path / "shelf")
    log(shelf, tmp_path, "m", "0")
    cursor = tmp_path / "cursor.json"
    stop = threading.Event()
    stop.set()
    shelf.watch("m", print, cursor=cursor, stop=stop)
    v1 = log(shelf, tmp_path, "m", "1")
    thread = written_later(next((tmp_path / "shelf").rglob("versions/000000000001.json")))
    seen: list[str] = []
    started = time.monotonic()
    watcher = ms.Shelf(tmp_path / "shelf")  # another process's view: not what this one wrote
    watcher.watch("m", lambda v: seen.append(v.ref), cursor=cursor, poll=0.05, max_events=1)
    thread.join()
    assert seen == [v1.ref] and time.monotonic() - started >= 0.35


def test_an_alias_move_being_written_is_waited_for(tmp_path: Path) -> None:
    """An alias record that does not decode yet when the watcher first sees the log grow is
    read again until it does: its move is called back, not lost."""
    shelf = ms.Shelf(tmp_path / "shelf")
    v0 = log(shelf, tmp_path, "m", "0")
    v0.set_alias("production")
    thread = written_later(next((tmp_path / "shelf").rglob("aliases/000000000000.json")))
    seen: list[str] = []
    stop = threading.Event()
    threading.Timer(10, stop.set).start()  # fail, not hang, if the move is lost
    watcher = ms.Shelf(tmp_path / "shelf")  # another process's view: not what this one wrote
    watcher.watch(
        "m", lambda v: seen.append(v.ref), alias="production", poll=0.05, max_events=1, stop=stop
    )
    stop.set()
    thread.join()
    assert seen == [v0.ref]


EVAL = """
import os, sys, time
with open(sys.argv[2], "a") as f:
    f.write(sys.argv[1] + "\\n")
time.sleep(0.2)
sys.exit(int(os.environ.get("EVAL_EXIT", "0")))
"""


def watcher(tmp: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = f"{sys.executable} {tmp / 'eval.py'} {{ref}} {tmp / 'evaluated.txt'}"
    return subprocess.Popen(
        [EXE, "--shelf", str(tmp / "shelf"), "watch", "net", "--exec", command, "--poll", "0.1",
         "--cursor", str(tmp / "cursor.json"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def evaluated(tmp: Path) -> list[str]:
    path = tmp / "evaluated.txt"
    return path.read_text().split() if path.exists() else []


def wait_for(condition, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


TRAINING = """
import sys, time
import modelshelf as ms
shelf = ms.Shelf(sys.argv[1])
with shelf.run(job_type="train") as run:
    for i in range(int(sys.argv[2]), int(sys.argv[3])):
        path = sys.argv[4] + f"/w{i}.bin"
        open(path, "w").write(f"weights {i}")
        run.log_artifact(path, name="net", type="model")
        time.sleep(0.3)
"""


@pytest.mark.slow
def test_watcher_evaluates_each_version_once_across_kills_and_restarts(tmp_path: Path) -> None:
    (tmp_path / "eval.py").write_text(EVAL)
    shelf = ms.Shelf(tmp_path / "shelf")
    log(shelf, tmp_path, "net", "before")  # v0: there before the watcher starts

    first = watcher(tmp_path)
    wait_for(lambda: (tmp_path / "cursor.json").exists())
    training = subprocess.run(
        [sys.executable, "-c", TRAINING, str(tmp_path / "shelf"), "1", "2", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert training.returncode == 0, training.stderr
    wait_for(lambda: evaluated(tmp_path) == ["net:v1"])
    wait_for(lambda: json.loads((tmp_path / "cursor.json").read_text())["version"] == 1)
    first.send_signal(signal.SIGKILL)
    first.wait()

    # Killed after v1 was evaluated and saved; pretend the save was lost, as a kill between
    # the command's end and the cursor's write would leave it: the runs say v1 is done.
    (tmp_path / "cursor.json").write_text(json.dumps({"version": 0, "moves": 0}))
    training = subprocess.Popen(
        [sys.executable, "-c", TRAINING, str(tmp_path / "shelf"), "2", "4", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    second = watcher(tmp_path, "--max-events", "3")
    _out, err = second.communicate(timeout=120)
    assert training.wait(timeout=120) == 0
    assert second.returncode == 0, err
    assert "net:v1: already evaluated by this watcher; skipped" in err
    assert evaluated(tmp_path) == ["net:v1", "net:v2", "net:v3"]  # each once, in order
    for n in (1, 2, 3):
        runs = shelf.get(f"net:v{n}").used_by()
        assert [(r.job_type, r.status) for r in runs] == [("evaluate", "finished")]
        graph = shelf.lineage(f"net:v{n}", direction="downstream")
        assert (f"net:v{n}", f"run:{runs[0].id}", "used") in graph.edges


@pytest.mark.slow
def test_a_failing_command_is_reported_retried_and_its_run_failed(tmp_path: Path) -> None:
    (tmp_path / "eval.py").write_text(EVAL)
    shelf = ms.Shelf(tmp_path / "shelf")
    proc = watcher(tmp_path, "--max-events", "1", "--retries", "2", env={"EVAL_EXIT": "3"})
    wait_for(lambda: (tmp_path / "cursor.json").exists())
    log(shelf, tmp_path, "net", "v0")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert err.count("exited with status 3") == 3 and "attempt 3 of 3" in err
    assert evaluated(tmp_path) == ["net:v0"] * 3
    (run,) = shelf.get("net:v0").used_by()
    assert run.status == "failed" and "exited with status 3" in (run.error or "")
