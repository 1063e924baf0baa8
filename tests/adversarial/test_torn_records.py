"""Records that do not decode: still being written, or torn by a crash or a failed write.

Where create-if-absent writes the final key in place (a generic fsspec backend, a local mount
without hard links), a reader can meet such a record. It must never pass for a real one, never
block the artifact, and never let gc free what a version might need.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import flakyfs
import modelshelf as ms
from modelshelf._format import seqlog
from modelshelf._format.layout import ArtifactKeys, manifest_key
from modelshelf._format.records import UnreadableRecord, dumps, loads
from modelshelf._format.seqlog import SeqLog


def test_no_prefix_and_no_zero_filled_tail_of_a_record_decodes() -> None:
    record = {"name": "m", "version": 3, "metadata": {"acc": 0.5, "note": "é"}, "tags": []}
    data = dumps(record)
    assert loads(data, "x") == record
    for cut in range(len(data)):
        for torn in (data[:cut], data[:cut] + b"\0" * (len(data) - cut)):
            with pytest.raises(UnreadableRecord):
                loads(torn, "x")
    flipped = bytearray(data)
    flipped[-5] ^= 1
    with pytest.raises(UnreadableRecord, match="checksum"):
        loads(bytes(flipped), "x")
    assert loads(b'{"a": 1}', "x") == {"a": 1}  # records written before the seal
    assert loads(dumps({}), "x") == {}


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


@pytest.fixture
def generic(tmp_path: Path) -> ms.Shelf:
    return ms.Shelf(f"flaky://{tmp_path}/shelf")


def logged(shelf: ms.Shelf, tmp_path: Path, name: str, content: bytes) -> ms.ArtifactVersion:
    path = tmp_path / "w.bin"
    path.write_bytes(content)
    return shelf.log_artifact(path, name=name, type="model")


def test_a_torn_version_is_skipped_and_gc_frees_nothing_it_might_need(
    generic: ms.Shelf, tmp_path: Path
) -> None:
    logged(generic, tmp_path, "m", b"zero")
    storage = generic.repository.storage
    log = SeqLog(storage, ArtifactKeys("m").versions)
    torn = tmp_path / "shelf" / log.key(1)
    torn.write_bytes(dumps({"name": "m", "version": 1, "padding": "x" * 100})[:60])
    age(torn, seqlog.TORN_AFTER_SECONDS + 5)  # a writer that crashed a while ago
    logged(generic, tmp_path, "old", b"freed by gc unless a damaged version may need it")
    generic.delete("old:v0")

    fresh = ms.Shelf(generic.url)
    assert [v.version for v in fresh.versions("m")] == [0]
    assert fresh.get("m:latest").version == 0
    with pytest.raises(ms.IntegrityError, match=r"checksum|not valid JSON"):
        fresh.get("m:v1")
    report = fresh.gc(grace_period=0)
    assert report.damaged == ["m:v1"] and report.blobs == 0 and report.manifests == 0
    v2 = logged(fresh, tmp_path, "m", b"two")
    assert v2.version == 2
    assert [v.version for v in fresh.versions("m")] == [0, 2]
    assert fresh.get("m:latest").version == 2


def test_a_record_being_written_is_waited_for_not_overwritten(
    generic: ms.Shelf, tmp_path: Path
) -> None:
    v0 = logged(generic, tmp_path, "m", b"zero")
    v0.set_alias("a")
    storage = generic.repository.storage
    log = SeqLog(storage, ArtifactKeys("m").aliases)
    n, head = log.head()
    assert head is not None
    slow = {"aliases": {**head["aliases"], "slow": 0}, "events": [], "by": head["by"]}
    data = dumps(slow)
    path = tmp_path / "shelf" / log.key(n + 1)
    path.write_bytes(data[:20])  # another writer, in the middle of its record

    def finish() -> None:
        time.sleep(0.5)
        path.write_bytes(data)

    thread = threading.Thread(target=finish)
    thread.start()
    started = time.monotonic()
    v0.set_alias("b")
    thread.join()
    assert time.monotonic() - started >= 0.4
    assert generic.get("m:v0").aliases == ["a", "b", "latest", "slow"]


def test_a_root_record_being_written_is_waited_for(generic: ms.Shelf, tmp_path: Path) -> None:
    """Writers that open a new shelf at once: one meets the root record another is still
    writing. It waits for it (it used to fail with UnreadableRecord), and a root record torn
    by a crash long ago is still refused."""
    logged(generic, tmp_path, "m", b"zero")
    path = tmp_path / "shelf" / "modelshelf.json"
    whole = path.read_bytes()
    path.write_bytes(whole[:20])  # the first writer, in the middle of its record

    def finish() -> None:
        time.sleep(0.5)
        path.write_bytes(whole)

    thread = threading.Thread(target=finish)
    thread.start()
    started = time.monotonic()
    v1 = logged(ms.Shelf(generic.url), tmp_path, "m", b"one")
    thread.join()
    assert time.monotonic() - started >= 0.4 and v1.version == 1
    assert ms.Shelf(generic.url).id == generic.id  # the same shelf: not a second root record

    path.write_bytes(whole[:20])
    age(path, seqlog.TORN_AFTER_SECONDS + 5)
    with pytest.raises(UnreadableRecord, match=r"modelshelf\.json"):
        ms.Shelf(generic.url).get("m")
    path.write_bytes(whole)


def test_a_rename_tombstone_being_written_is_waited_for(
    generic: ms.Shelf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two renames of one name at once: the second meets the first one's tombstone
    half-written. It waits for it and gives way (it used to take it for torn and rewrite it,
    and both renames won: one CI run in many); a tombstone torn by a crash long ago is still
    rewritten."""
    logged(generic, tmp_path, "a", b"zero")
    tombstone = tmp_path / "shelf" / ArtifactKeys("a").renamed
    whole = dumps({"to": "b", "at": "2026-01-01T00:00:00+00:00", "by": {}})
    shelf = ms.Shelf(generic.url)
    storage = shelf.repository.storage
    create = storage.create

    def racing(key: str, data: bytes) -> bool:
        if key == ArtifactKeys("a").renamed:  # the other rename got there first, and writes
            tombstone.write_bytes(whole[:15])
            threading.Timer(0.5, lambda: tombstone.write_bytes(whole)).start()
        return create(key, data)

    monkeypatch.setattr(storage, "create", racing)
    started = time.monotonic()
    with pytest.raises(ms.ConflictError, match="renamed to 'b' by another process"):
        shelf.rename("a", "c")
    assert time.monotonic() - started >= 0.4
    assert loads(tombstone.read_bytes(), "tombstone")["to"] == "b"
    monkeypatch.undo()

    tombstone.unlink()
    storage = generic.repository.storage
    create = storage.create

    def torn(key: str, data: bytes) -> bool:
        if key == ArtifactKeys("a").renamed:  # a rename that crashed long ago, mid-write
            tombstone.write_bytes(whole[:15])
            age(tombstone, seqlog.TORN_AFTER_SECONDS + 5)
        return create(key, data)

    monkeypatch.setattr(storage, "create", torn)
    generic.rename("a", "d")  # torn long ago: this rename rewrites it
    assert loads(tombstone.read_bytes(), "tombstone")["to"] == "d"


def test_a_name_whose_tombstone_is_being_written_still_works(
    generic: ms.Shelf, tmp_path: Path
) -> None:
    """A rename's tombstone met half-written (a generic filesystem writes it in place): the
    old name still works, and a second rename of it waits for the tombstone and gives way. It
    used to fail at once, saying "'a' was renamed to 'a'" (one CI run in many)."""
    logged(generic, tmp_path, "a", b"zero")
    generic.rename("a", "b")
    tombstone = tmp_path / "shelf" / ArtifactKeys("a").renamed
    whole = tombstone.read_bytes()
    tombstone.write_bytes(whole[:15])  # just begun: not torn, being written
    assert ms.Shelf(generic.url).get("a").version == 0
    threading.Timer(0.5, lambda: tombstone.write_bytes(whole)).start()
    with pytest.raises(ms.ConflictError, match="renamed to 'b' by another process"):
        ms.Shelf(generic.url).rename("a", "c")
    fresh = ms.Shelf(generic.url)
    assert fresh.artifacts() == ["b"] and fresh.get("b").version == 0
    with pytest.raises(ms.NotFoundError, match="'a' was renamed to 'b'"):
        fresh.get("a")


def test_a_torn_artifact_record_is_rebuilt_from_its_versions(
    generic: ms.Shelf, tmp_path: Path
) -> None:
    logged(generic, tmp_path, "m", b"zero")
    info = tmp_path / "shelf" / ArtifactKeys("m").info
    info.write_bytes(info.read_bytes()[:10])
    age(info, seqlog.TORN_AFTER_SECONDS + 5)
    assert ms.Shelf(generic.url).artifacts(type="model") == ["m"]
    with pytest.raises(ms.ConflictError, match="type 'model'"):
        generic.log_artifact(tmp_path / "w.bin", name="m", type="dataset")
    assert logged(generic, tmp_path, "m", b"one").version == 1
    assert loads(info.read_bytes(), "info")["type"] == "model"

    # Torn before any version was committed: the name is free to claim.
    info = tmp_path / "shelf" / ArtifactKeys("n").info
    info.parent.mkdir(parents=True)
    info.write_bytes(b'{"_sha256":"')
    age(info, seqlog.TORN_AFTER_SECONDS + 5)
    path = tmp_path / "d.bin"
    path.write_bytes(b"data")
    assert generic.log_artifact(path, name="n", type="dataset").type == "dataset"


def test_a_torn_manifest_is_written_again(generic: ms.Shelf, tmp_path: Path) -> None:
    v0 = logged(generic, tmp_path, "m", b"zero")
    key = manifest_key(v0.manifest.sha256())
    generic.delete("m:v0")
    path = tmp_path / "shelf" / key
    path.write_bytes(path.read_bytes()[:7])  # as a crash in the middle of its create leaves it
    again = logged(generic, tmp_path, "m", b"zero")
    again.verify()
    assert ms.Shelf(generic.url).get("m:latest").download().joinpath("w.bin").read_bytes() == (
        b"zero"
    )


def test_failed_writes_wedge_nothing_on_a_generic_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1% of the generic backend's writes, moves, removals and reads fail (a write after
    writing half its bytes). Afterwards every name still takes new versions, and every version
    that was committed reads back whole."""
    monkeypatch.setattr(seqlog, "TORN_AFTER_SECONDS", 0.5)
    shelf = ms.Shelf(f"flaky://{tmp_path}/shelf")
    shelf.repository.info(create=True)
    fs = flakyfs.FlakyFileSystem
    monkeypatch.setattr(fs, "rng", __import__("random").Random(1234))
    monkeypatch.setattr(fs, "faults", 0)
    monkeypatch.setattr(fs, "fault_rate", 0.01)
    names = ["a", "b", "team/c"]
    failures = 0
    for i in range(60):
        name = names[i % 3]
        path = tmp_path / f"{i}.bin"
        path.write_bytes(f"content {i}".encode() * 50)
        try:
            v = shelf.log_artifact(path, name=name, type="model", aliases=["best"])
            if i % 4 == 0:
                v.add_tags(f"t{i}")
            if i % 5 == 0:
                v.set_alias("production")
        except OSError:
            failures += 1
    monkeypatch.setattr(fs, "fault_rate", 0.0)
    assert fs.faults > 10 and failures > 5  # the faults did strike, and broke operations

    fresh = ms.Shelf(shelf.url)
    for name in names:
        path = tmp_path / "after.bin"
        path.write_bytes(f"after {name}".encode())
        assert fresh.log_artifact(path, name=name, type="model").version >= 1
        for version in fresh.versions(name):
            version.verify()
            assert version.aliases is not None
    fresh.gc(grace_period=0)
    for name in names:
        for version in fresh.versions(name):
            version.verify()


def test_a_create_that_fails_halfway_leaves_nothing(
    generic: ms.Shelf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = generic.repository.storage
    rolls = iter([False, True, False])  # open succeeds, the write fails halfway, rm succeeds
    monkeypatch.setattr(flakyfs.FlakyFileSystem, "roll", classmethod(lambda cls: next(rolls)))
    with pytest.raises(flakyfs.InjectedFault):
        storage.create("artifacts/_/m/versions/000000000000.json", dumps({"a": 1}))
    assert not (tmp_path / "shelf" / "artifacts/_/m/versions/000000000000.json").exists()
    assert (tmp_path / "shelf" / "artifacts/_/m/versions").is_dir()  # parents were made
