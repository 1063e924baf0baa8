"""``fsck``: every kind of damage is found and named per version, nothing is changed without
``repair``, and ``repair`` moves the damage aside (deleting nothing) so that gc works again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelshelf as ms
from modelshelf._format import seqlog
from modelshelf._format.layout import ArtifactKeys, RunKeys, blob_key, manifest_key
from modelshelf._format.records import dumps, loads
from modelshelf._format.seqlog import SeqLog
from modelshelf.cli.commands import run as cli


def every_key(shelf: ms.Shelf) -> dict[str, bytes]:
    storage = shelf.repository.storage
    return {k: storage.open_read(k).read() for k in storage.find("")}


@pytest.fixture
def damaged(shelf: ms.Shelf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ms.Shelf:
    """A shelf with one of each kind of damage; ``healthy`` versions untouched."""
    monkeypatch.setattr(seqlog, "TORN_AFTER_SECONDS", -1.0)  # every torn record is settled
    with shelf.run() as run:
        for name in ("ok", "m"):
            for i in range(4):
                path = tmp_path / "w.bin"
                path.write_bytes(f"{name} {i}".encode() * 64)
                run.log_artifact(path, name=name, type="model")
    shelf.get("ok:v1").set_alias("production")
    shelf.get("m:v3").set_alias("best")
    storage = shelf.repository.storage
    m = {n: shelf.get(f"m:v{n}") for n in range(4)}
    # v0: its only blob is corrupt; v1: its manifest is gone; v2: its manifest is changed.
    storage.replace(blob_key(m[0].manifest.files["w.bin"].hex or ""), b"rotten bytes")
    storage.delete(manifest_key(m[1].manifest.sha256()))
    key = manifest_key(m[2].manifest.sha256())
    storage.replace(key, storage.read(key).replace(b'"size"', b'"size" '))
    # v3's commit record names another artifact; a v4 record was torn by a crash.
    versions = SeqLog(storage, ArtifactKeys("m").versions)
    record = loads(storage.read(versions.key(3)), "v3")
    storage.replace(versions.key(3), dumps({**record, "name": "elsewhere"}))
    storage.replace(versions.key(4), dumps({"name": "m", "version": 4})[:30])
    # the run's end record is torn; a temporary file is left over
    storage.replace(RunKeys(run.id).end, b'{"_sha256":"00')
    storage.replace("tmp/leftover.tmp", b"half a blob")
    return shelf


def test_fsck_names_each_damage_per_version_and_changes_nothing(damaged: ms.Shelf) -> None:
    before = every_key(damaged)
    report = damaged.fsck()
    assert every_key(damaged) == before
    kinds = {ref: sorted(p.kind for p in ps) for ref, ps in report.by_version().items()}
    assert kinds == {
        "m:v0": ["corrupt-blob"],
        "m:v1": ["missing-manifest"],
        "m:v2": ["corrupt-manifest"],
        "m:v3": ["bad-record", "dangling-alias"],  # best points to it
        "m:v4": ["torn-record"],
        "(shelf)": ["torn-record"],  # the run's end record
    }
    assert not report.ok and report.garbage["temporary files"] == 1
    assert report.checked["versions"] == 7 and report.checked["blobs"] == 5
    gc = damaged.gc(grace_period=0, dry_run=True)
    assert gc.damaged and gc.blobs == 0  # the damage keeps gc from freeing anything


def test_repair_sets_damage_aside_without_deleting_and_gc_works_again(
    damaged: ms.Shelf,
) -> None:
    before = every_key(damaged)
    report = damaged.fsck(repair=True)
    assert report.ok and report.quarantine
    assert all(p.repaired for p in report.problems), report
    after = every_key(damaged)
    kept = set(after.values())
    lost = [k for k, data in before.items() if data not in kept]
    assert lost == [], lost  # every byte there before is still there, if only in quarantine

    fresh = ms.Shelf(damaged.url)
    assert [v.version for v in fresh.versions("m")] == []
    with pytest.raises(ms.NotFoundError, match="set aside by `modelshelf fsck --repair`"):
        fresh.get("m:v0")
    assert fresh.get("ok:production").version == 1
    for v in fresh.versions("ok"):
        v.verify()
    again = fresh.fsck()
    assert again.ok and again.problems == [], again
    gc = fresh.gc(grace_period=0)
    assert gc.damaged == [] and gc.blobs >= 1  # v1's bytes, whose manifest was lost
    for v in fresh.versions("ok"):
        v.verify()
    path = Path(str(fresh.get("ok:latest").download())) / "w.bin"
    assert path.read_bytes() == b"ok 3" * 64
    # The name takes new versions again, after the torn v4 (never reused).
    assert fresh.get("ok:v0").version == 0
    new = fresh.log_artifact(path, name="m", type="model")
    assert new.version == 5


def test_fsck_cli_json_and_exit_status(
    damaged: ms.Shelf, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["--shelf", damaged.url, "fsck", "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert not found["ok"] and len(found["problems"]) == 7
    assert cli(["--shelf", damaged.url, "fsck", "--repair"]) == 0
    text = capsys.readouterr().out
    assert "m:v0:" in text and "every problem was set aside" in text
    assert cli(["--shelf", damaged.url, "fsck"]) == 0
    assert "no damage found" in capsys.readouterr().out
