"""Real processes: concurrent writers, concurrent alias moves, a writer killed mid-log, memory."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelshelf as ms
from conftest import make_url, run_python

WRITER = r"""
import os, sys, time
import modelshelf as ms
url, worker, start, out, logs = sys.argv[1:6]
worker, logs = int(worker), int(logs)
shelf = ms.Shelf(url)
open(f"{start}.ready-{worker}", "w").close()
deadline = time.monotonic() + 300  # never outlive a test that failed before the start
while not os.path.exists(start):
    assert time.monotonic() < deadline, "no start signal"
    time.sleep(0.005)
got = []
for i in range(logs):
    path = os.path.join(out, f"w{worker}-{i}.bin")
    with open(path, "wb") as f:
        f.write(f"worker {worker} log {i}\n".encode() + os.urandom(4096))
    got.append(shelf.log_artifact(path, name="shared", type="dataset").version)
print(" ".join(map(str, got)))
"""


@pytest.fixture(params=["local", "s3", "gcs"])
def process_shelf_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_url(request.param, tmp_path, request)


def _start_all(procs_args: list[list[str]]) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args in procs_args
    ]


def _release(start: Path, procs: list[subprocess.Popen[str]]) -> None:
    """Touch the start line once every process has written its ready-file (imports done)."""
    deadline = time.monotonic() + 120
    while len(list(start.parent.glob(f"{start.name}.ready-*"))) < len(procs):
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, dead[0].communicate()[1]
        assert time.monotonic() < deadline, "the processes did not get ready in 120 s"
        time.sleep(0.01)
    start.touch()


def _finish(procs: list[subprocess.Popen[str]], timeout: float = 300) -> list[str]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


@pytest.mark.slow
def test_six_writers_get_distinct_consecutive_versions(
    process_shelf_url: str, tmp_path: Path
) -> None:
    start = tmp_path / "go"
    # The GCS emulator serves one request at a time: fewer logs there, the same contention.
    logs = 3 if process_shelf_url.startswith("gs://") else 10
    procs = _start_all(
        [
            [WRITER, process_shelf_url, str(w), str(start), str(tmp_path), str(logs)]
            for w in range(6)
        ]
    )
    _release(start, procs)
    outs = _finish(procs)

    total = 6 * logs
    claimed = sorted(int(v) for out in outs for v in out.split())
    assert claimed == list(range(total))  # none lost, none doubled
    shelf = ms.Shelf(process_shelf_url)
    versions = shelf.versions("shared")
    assert [v.version for v in versions] == list(range(total))
    assert len({v.digest for v in versions}) == total
    for v in versions:
        v.verify()
    assert shelf.get("shared").version == total - 1


MOVER = r"""
import os, sys, time
import modelshelf as ms
url, version, start = sys.argv[1], int(sys.argv[2]), sys.argv[3]
v = ms.Shelf(url).get(f"model:v{version}")
open(f"{start}.ready-{version}", "w").close()
deadline = time.monotonic() + 300  # never outlive a test that failed before the start
while not os.path.exists(start):
    assert time.monotonic() < deadline, "no start signal"
    time.sleep(0.005)
for _ in range(10):
    v.set_alias("production")
"""


@pytest.mark.slow
def test_four_processes_moving_one_alias(process_shelf_url: str, tmp_path: Path) -> None:
    shelf = ms.Shelf(process_shelf_url)
    for i in range(4):
        (tmp_path / "m.bin").write_bytes(f"model {i}".encode())
        shelf.log_artifact(tmp_path / "m.bin", name="model", type="model")
    start = tmp_path / "go"
    procs = _start_all([[MOVER, process_shelf_url, str(i), str(start)] for i in range(4)])
    _release(start, procs)
    _finish(procs)

    final = shelf.get("model:production").version
    assert final in range(4)
    history = shelf.alias_history("model", "production")
    assert len(history) >= 4  # every process moved it at least once
    assert history[0].previous is None
    for before, after in itertools.pairwise(history):
        assert after.previous == before.version  # each move starts where the last one ended
        assert after.version != after.previous
    assert history[-1].version == final
    assert {e.version for e in history} == set(range(4))


CRASHER = r"""
import sys
import modelshelf as ms
url, path = sys.argv[1], sys.argv[2]
print("start", flush=True)
ms.Shelf(url).log_artifact(path, name="model", type="model")
print("finished", flush=True)
"""


def _in_flight(url: str, tmp_path: Path) -> bool:
    """True once the killed writer is visibly half-way through storing the large file."""
    if not url.startswith("s3://"):
        tmp = tmp_path / "shelf" / "tmp"
        return tmp.is_dir() and any(p.stat().st_size > 0 for p in tmp.iterdir())
    import boto3

    bucket = url[len("s3://") :].split("/", 1)[0]
    uploads = boto3.client("s3").list_multipart_uploads(Bucket=bucket)
    return bool(uploads.get("Uploads"))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"])  # an upload in flight is seen on these
def test_writer_killed_mid_log_leaves_no_partial_version(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    process_shelf_url = make_url(backend, tmp_path, request)
    shelf = ms.Shelf(process_shelf_url)
    (tmp_path / "small.bin").write_bytes(b"v0")
    shelf.log_artifact(tmp_path / "small.bin", name="model", type="model", aliases=["best"])
    (tmp_path / "small.bin").write_bytes(b"v1")
    shelf.log_artifact(tmp_path / "small.bin", name="model", type="model", aliases=["prod"])
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(400):
            f.write(os.urandom(1024 * 1024))

    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHER, process_shelf_url, str(big)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "start"
    deadline = time.monotonic() + 120
    while not _in_flight(process_shelf_url, tmp_path):
        assert proc.poll() is None, "the writer finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    fresh = ms.Shelf(process_shelf_url)
    assert [v.version for v in fresh.versions("model")] == [0, 1]
    assert fresh.get("model").version == 1
    assert fresh.get("model:best").version == 0 and fresh.get("model:prod").version == 1
    for v in fresh.versions("model"):
        v.verify()
        v.download()
    # The shelf keeps working: the next log gets the next number.
    (tmp_path / "small.bin").write_bytes(b"v2")
    assert fresh.log_artifact(tmp_path / "small.bin", name="model", type="model").version == 2


MEMORY = r"""
import os, resource, sys
import modelshelf as ms
url, path, small = sys.argv[1], sys.argv[2], sys.argv[3]
shelf = ms.Shelf(url)
shelf.log_artifact(small, name="warmup", type="model")  # load every code path once
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
v = shelf.log_artifact(path, name="huge", type="model")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, v.size)
"""


@pytest.mark.slow
def test_logging_one_gib_keeps_memory_flat(tmp_path: Path) -> None:
    big = tmp_path / "huge.bin"
    block = os.urandom(1024 * 1024)
    with open(big, "wb") as f:
        for _ in range(1024):
            f.write(block)
    (tmp_path / "small.bin").write_bytes(b"x" * 1000)
    out = run_python(MEMORY, str(tmp_path / "shelf"), str(big), str(tmp_path / "small.bin"))
    before_kib, after_kib, size = map(int, out.stdout.split())
    assert size == 1 << 30
    assert (after_kib - before_kib) < 100 * 1024, (
        f"peak RSS rose by {(after_kib - before_kib) / 1024:.0f} MiB"
    )
    big.unlink()


def test_import_loads_no_ml_framework() -> None:
    out = run_python(
        "import sys, modelshelf; "
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'fastai', 'lightning', "
        "'pytorch_lightning', 'numpy', 's3fs') if m in sys.modules))"
    )
    assert out.stdout.strip() == "[]"
