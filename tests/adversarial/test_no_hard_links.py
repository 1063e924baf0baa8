"""A local shelf on a filesystem without hard links, as Colab's Google Drive mount is.

No such filesystem can be mounted here, so ``link()`` is made to fail at the syscall boundary:
a tiny shared library, preloaded into a child process, answers every ``link``/``linkat`` with
``ENOSYS`` (errno 38, what Drive's FUSE mount answers). The shelf must notice, fall back to
``O_CREAT|O_EXCL`` records, and keep every guarantee: the shelf contract suite and the crash
tests run there unchanged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent.parent

SHIM = r"""
#include <errno.h>
int link(const char *from, const char *to) {
    (void)from; (void)to; errno = ENOSYS; return -1;
}
int linkat(int fd1, const char *from, int fd2, const char *to, int flags) {
    (void)fd1; (void)from; (void)fd2; (void)to; (void)flags; errno = ENOSYS; return -1;
}
"""


@pytest.fixture(scope="module")
def no_links(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a child process in which ``link()`` always fails with ENOSYS."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("building the link() shim needs a C compiler (gcc)")
    build = tmp_path_factory.mktemp("shim")
    (build / "nolink.c").write_text(SHIM)
    library = build / "nolink.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(build / "nolink.c")],
        check=True,
    )
    env = {**os.environ, "LD_PRELOAD": str(library)}
    probe = subprocess.run(
        [sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').close(); "
         "os.link(sys.argv[1], sys.argv[1] + '.2')", str(build / "probe")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert probe.returncode != 0 and "Errno 38" in probe.stderr, probe.stderr
    return env


WRITER = r"""
import sys
from pathlib import Path
import modelshelf as ms

root, data = Path(sys.argv[1]), Path(sys.argv[2])
shelf = ms.Shelf(str(root))
with shelf.run(job_type="train", config={"lr": 0.1}) as run:
    run.log({"loss": 0.5})
    for i in range(3):
        (data / "w.bin").write_bytes(b"weights %d" % i)
        v = run.log_artifact(data / "w.bin", name="team/m", type="model", aliases=["best"])
        v.add_tags(f"epoch-{i}")
    shelf.get("team/m:v1").set_alias("production")
with shelf.run(job_type="eval") as run:
    run.use("team/m:production")
shelf.delete("team/m:v0")
print(shelf.gc(grace_period=0).blobs, shelf.repository.storage.creates_can_tear)
"""

READER = r"""
import sys
from pathlib import Path
import modelshelf as ms

shelf = ms.Shelf(sys.argv[1])
v = shelf.get("team/m:production")
v.verify()
print(v.version, sorted(v.aliases), v.tags, (v.download() / "w.bin").read_bytes().decode())
print([x.version for x in shelf.versions("team/m")], len(v.used_by()), shelf.runs()[0].config)
"""


def test_a_shelf_works_where_link_is_refused(no_links: dict[str, str], tmp_path: Path) -> None:
    root, data = tmp_path / "drive" / "shelf", tmp_path / "data"
    data.mkdir()
    env = {**no_links, "MODELSHELF_CACHE": str(tmp_path / "cache")}
    wrote = subprocess.run(
        [sys.executable, "-c", WRITER, str(root), str(data)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrote.returncode == 0, wrote.stderr
    assert wrote.stdout.split() == ["1", "True"]  # v0's blob was freed; O_EXCL was chosen
    read = subprocess.run(
        [sys.executable, "-c", READER, str(root)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines() == [
        "1 ['production'] ['epoch-1'] weights 1",
        "[1, 2] 1 {'lr': 0.1}",
    ]
    assert list((root / "tmp").iterdir()) == []
    records = [p for p in root.rglob("*.json") if "manifests" not in p.parts]
    assert records and all(p.read_bytes().startswith(b'{"_sha256":"') for p in records)


@pytest.mark.slow
def test_contract_and_crash_suites_pass_without_hard_links(
    no_links: dict[str, str], tmp_path: Path
) -> None:
    """The local-disk cases of the shelf contract suite and of the crash and concurrency
    tests, run again in a pytest whose process (and children) cannot link()."""
    suites = [
        "tests/test_shelf.py",
        "tests/test_runs.py",
        "tests/test_processes.py",
        "tests/test_cleanup.py",
        "tests/adversarial/test_gc_races.py",
        "tests/adversarial/test_hostile_shelves.py",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "--basetemp", str(tmp_path / "inner"), "-k", "local and not one_gib", *suites],
        cwd=TESTS.parent, env=no_links, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 30, summary
