"""delete, prune, gc (including against a writer in flight in another process), the cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import modelshelf as ms
from conftest import blob_keys, make_url
from modelshelf._format.layout import blob_key, manifest_key


def _hex(v: ms.ArtifactVersion, path: str) -> str:
    digest = v.files[path].digest
    assert digest is not None
    return digest[len("sha256:") :]


def _log(shelf: ms.Shelf, folder: Path, files: dict[str, str], **kw: object) -> ms.ArtifactVersion:
    for p in folder.iterdir():
        p.unlink()
    for name, text in files.items():
        (folder / name).write_text(text)
    return shelf.log_artifact(folder, name="m", type="model", **kw)  # type: ignore[arg-type]


def test_delete_refuses_aliased_versions_unless_forced(shelf: ms.Shelf, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    _log(shelf, folder, {"a": "1"}, aliases=["prod"])
    _log(shelf, folder, {"a": "2"})
    with pytest.raises(ms.ConflictError, match="prod"):
        shelf.delete("m:v0")
    shelf.delete("m:v1")  # only 'latest', which moves back by itself
    assert shelf.get("m").version == 0
    shelf.delete("m:prod", force=True)
    with pytest.raises(ms.NotFoundError, match=r"Every version of 'm' \(v0 to v1\) was deleted"):
        shelf.get("m:prod")
    assert shelf.alias_history("m", "prod")[-1].version is None
    # Numbers are never reused.
    assert _log(shelf, folder, {"a": "3"}).version == 2
    assert [v.version for v in shelf.versions("m")] == [2]
    with pytest.raises(ms.NotFoundError, match="v0 was deleted"):
        shelf.get("m:v0")


def test_prune_keeps_the_newest_and_the_aliased(shelf: ms.Shelf, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    for i in range(6):
        _log(shelf, folder, {"a": str(i)}, aliases=["best"] if i == 1 else [])
    would = shelf.prune("m", keep_last=2, dry_run=True)
    assert [v.version for v in would] == [0, 2, 3]
    assert len(shelf.versions("m")) == 6
    gone = shelf.prune("m", keep_last=2)
    assert [v.version for v in gone] == [0, 2, 3]
    assert [v.version for v in shelf.versions("m")] == [1, 4, 5]
    shelf.prune("m", keep_last=1, keep_aliased=False)
    assert [v.version for v in shelf.versions("m")] == [5]


def test_gc_frees_exactly_the_unreferenced_blobs(shelf: ms.Shelf, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    v0 = _log(shelf, folder, {"a": "shared", "b": "only v0 and v1", "c": "c0"})
    v1 = _log(shelf, folder, {"a": "shared", "b": "only v0 and v1", "c": "c1"})
    v2 = _log(shelf, folder, {"a": "shared", "d": "d2"})
    expected = {_hex(v0, "b"), _hex(v0, "c"), _hex(v1, "c")}
    assert shelf.gc(grace_period=0).blobs == 0  # everything is referenced
    shelf.delete("m:v0")
    shelf.delete("m:v1")

    preview = shelf.gc(dry_run=True, grace_period=0)
    assert preview.blobs == 3 and len(blob_keys(shelf)) == 5
    young = shelf.gc()  # default grace period: just-written blobs are kept
    assert young.blobs == 0 and young.kept_young == 3
    report = shelf.gc(grace_period=0)
    assert report.blobs == 3 and report.bytes == len("only v0 and v1") + 4
    assert report.manifests == 2
    left = {k.rsplit("/", 1)[-1] for k in blob_keys(shelf)}
    assert left == {_hex(v2, "a"), _hex(v2, "d")}
    assert not expected & left
    shelf.get("m:v2").verify()
    assert shelf.get("m:v2").download().joinpath("d").read_text() == "d2"


PAUSED_WRITER = r"""
import os, sys, time
import modelshelf as ms
from modelshelf._core import repository

url, path, signal_file, go_file = sys.argv[1:5]
original = repository.Repository._identical

def paused(self, *args, **kwargs):
    # Test instrumentation: stop after the blobs are stored, before the lease is written.
    open(signal_file, "w").close()
    deadline = time.monotonic() + 300  # never outlive a test that failed before "go"
    while not os.path.exists(go_file):
        assert time.monotonic() < deadline, "no go signal"
        time.sleep(0.01)
    return original(self, *args, **kwargs)

repository.Repository._identical = paused
# On a bucket, a plain file's lease is written before any blob is stored; this writer keeps
# the order of a commit whose files cannot be hashed first (a new safetensors file).
repository.Repository._plan = lambda self, sources: None
v = ms.Shelf(url).log_artifact(path, name="inflight", type="model")
print(v.ref, flush=True)
"""


def test_a_missing_manifest_is_reported_and_gc_frees_no_blob(
    shelf: ms.Shelf, tmp_path: Path
) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    _log(shelf, folder, {"a": "garbage"})
    damaged = _log(shelf, folder, {"a": "kept", "b": "mine"})
    shelf.delete("m:v0")
    storage = shelf.repository.storage
    storage.delete(manifest_key(damaged.manifest.sha256()))
    fresh = ms.Shelf(shelf.url)  # this process read the manifest already: it is immutable
    report = fresh.gc(grace_period=0)  # goes on: before, every later gc raised
    assert report.damaged == ["m:v1"] and report.blobs == 0
    assert "damaged version(s) (m:v1)" in str(report)
    assert len(blob_keys(shelf)) == 3  # v0's garbage too: v1 might have needed any blob
    with pytest.raises(ms.IntegrityError, match="is missing"):
        fresh.get("m:v1").verify()


def test_gc_leaves_young_temporary_files_of_writers_in_flight(
    shelf: ms.Shelf, tmp_path: Path
) -> None:
    storage = shelf.repository.storage
    _log(shelf, tmp_path, {"a": "x"})
    storage.replace("tmp/in-flight", b"half of an upload")  # written a moment ago
    assert shelf.gc(grace_period=0).temporary == 0
    assert storage.exists("tmp/in-flight")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_gc_never_breaks_a_writer_in_flight(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = make_url(backend, tmp_path, request)
    shelf = ms.Shelf(url)
    (tmp_path / "other.bin").write_bytes(b"an older version")
    shelf.log_artifact(tmp_path / "other.bin", name="other", type="model")
    payload = tmp_path / "weights.bin"
    payload.write_bytes(os.urandom(256 * 1024))
    stored, go = tmp_path / "stored", tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WRITER, url, str(payload), str(stored), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not stored.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    report = shelf.gc(grace_period=0)
    assert report.blobs == 1  # the writer's uncommitted blob looked like garbage, and went
    go.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "inflight:v0"
    fresh = ms.Shelf(url)
    fresh.get("inflight:v0").verify()
    assert (
        fresh.get("inflight").download().joinpath("weights.bin").read_bytes()
        == payload.read_bytes()
    )
    fresh.get("other").verify()


def test_cache_info_and_prune_least_recently_used(shelf: ms.Shelf, tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    old = _log(shelf, folder, {"a": "x" * 1000})
    new = _log(shelf, folder, {"a": "y" * 3000})
    old_dir = old.download()
    time.sleep(0.01)
    new_dir = new.download()
    info = ms.cache.info()
    assert info.bytes == 4000 and info.blobs == 2 and info.versions == 2
    report = ms.cache.prune(max_bytes=3500)
    assert (report.freed_bytes, report.freed_blobs, report.bytes_left) == (1000, 1, 3000)
    assert ms.cache.info().bytes == 3000
    assert not (old_dir / "a").exists()  # the least recently used went, with its links
    assert (new_dir / "a").read_text() == "y" * 3000
    assert old.download().joinpath("a").read_text() == "x" * 1000  # fetched again
    with pytest.raises(ValueError, match="max_bytes"):
        ms.cache.prune(-1)


def test_gc_of_pruned_versions_frees_only_their_own_bytes(shelf: ms.Shelf, tmp_path: Path) -> None:
    """What keep_last runs after each prune: no listing of the shelf, the same handshake."""
    import uuid

    from modelshelf._core.gc import gc as collect
    from modelshelf._format.layout import lease_key
    from modelshelf._format.records import dumps, isoformat, now

    folder = tmp_path / "m"
    folder.mkdir()
    v0 = _log(shelf, folder, {"shared": "both", "other": "x holds it too", "own": "v0 only",
                              "leased": "a writer in flight"})  # fmt: skip
    _log(shelf, folder, {"shared": "both"})
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "other").write_text("x holds it too")
    shelf.log_artifact(tmp_path / "x", name="x", type="dataset")
    storage = shelf.repository.storage
    lease = {"at": isoformat(now()), "by": {}, "blobs": [_hex(v0, "leased")], "manifests": []}
    storage.replace(lease_key(uuid.uuid4().hex), dumps(lease))  # type: ignore[arg-type]
    orphan, _ = storage.put_stream(lambda: [b"no version holds me"], blob_key)
    before = blob_keys(shelf)

    gone = shelf.prune("m", keep_last=1)
    assert [v.ref for v in gone] == ["m:v0"]
    report = collect(shelf.repository, dry_run=False, grace_period=0, only=gone)
    assert (report.blobs, report.manifests, report.kept_leased) == (1, 1, 1)
    assert report.bytes == len("v0 only")
    after = blob_keys(shelf)
    assert set(before) - set(after) == {f"blobs/sha256/{_hex(v0, 'own')[:2]}/{_hex(v0, 'own')}"}
    assert not storage.exists(manifest_key(v0.manifest_hex))
    for ref in ("m:v1", "x:v0"):
        shelf.get(ref).verify()
    # Only the pruned version's bytes were looked at: a full pass finds the orphan.
    full = shelf.gc(grace_period=0, dry_run=True)
    assert (full.blobs, full.bytes) == (1, len(b"no version holds me"))
    assert storage.exists(blob_key(orphan))
