"""A full disk (a 256 KiB tmpfs in a private mount namespace): logs fail with OSError, and
nothing stored before is lost, and no temporary file is left behind."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INSIDE = r"""
import errno, os, sys
import modelshelf as ms
root = sys.argv[1]
shelf = ms.Shelf(os.path.join(root, "shelf"))
small = os.path.join(root, "small.bin")
with open(small, "wb") as f:
    f.write(b"fits")
shelf.log_artifact(small, name="kept", type="data", aliases=["good"])
filler = os.path.join(root, "filler")
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk up to the last few blocks
try:
    while True:
        os.write(fd, b"\0" * 4096)
except OSError:
    pass
os.close(fd)
os.truncate(filler, max(os.path.getsize(filler) - 3 * 4096, 0))
failures = 0
for i in range(20):
    path = os.path.join("/tmp", f"modelshelf-disk-full-{os.getpid()}-{i}.bin")
    with open(path, "wb") as f:  # outside the full disk
        f.write(os.urandom(1000 + 700 * i))
    try:
        shelf.log_artifact(path, name=f"new{i}", type="data", tags=["x"])
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
        failures += 1
    finally:
        os.unlink(path)
tmp = os.path.join(root, "shelf", "tmp")
left = os.listdir(tmp) if os.path.isdir(tmp) else []
assert left == [], left
v = ms.Shelf(os.path.join(root, "shelf")).get("kept:good")
v.verify()
print("failures", failures)
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_full_disk_loses_nothing_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "inside.py"
    script.write_text(INSIDE)
    command = f"mount -t tmpfs -o size=256k tmpfs {mount} && {sys.executable} {script} {mount}"
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip("no permission for a private mount namespace here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = int(proc.stdout.split()[-1])
    assert failures >= 10  # most logs hit the full disk, at one step or another
