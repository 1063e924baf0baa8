"""Hostile shelves: records and keys that try to leave their folders, or to pass as intact.

Each case edits a shelf the way someone controlling its bucket or Drive folder could, then
asserts that the library's own error names the damage and that nothing was written outside
the folders it owns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelshelf as ms
from conftest import make_url
from modelshelf._format.layout import ArtifactKeys, manifest_key
from modelshelf._format.records import dumps, loads
from modelshelf._format.seqlog import SeqLog


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


@pytest.fixture
def logged(shelf: ms.Shelf, tmp_path: Path) -> ms.ArtifactVersion:
    (tmp_path / "w.bin").write_bytes(b"weights")
    with shelf.run() as run:
        return run.log_artifact(tmp_path / "w.bin", name="m", type="model")


def append_record(shelf: ms.Shelf, name: str, change: dict[str, object]) -> str:
    """Commit a copy of ``name:v0``'s record with ``change`` applied, as the next version."""
    storage = shelf.repository.storage
    log = SeqLog(storage, ArtifactKeys(name).versions)
    base = log.get(0)
    assert base is not None
    n, _ = log.append(lambda n, _h: {**base, **change, "version": n})
    return f"{name}:v{n}"


def test_a_run_id_that_climbs_out_is_refused(
    shelf: ms.Shelf, logged: ms.ArtifactVersion, tmp_path: Path
) -> None:
    ref = append_record(shelf, "m", {"run_id": "../../../escape"})
    with pytest.raises(ms.IntegrityError, match="malformed run id"):
        shelf.get(ref)
    with pytest.raises(ms.IntegrityError, match="malformed run id"):
        shelf.versions("m")
    with pytest.raises(ms.InvalidReferenceError, match="Invalid run id"):
        shelf.log_artifact(tmp_path / "w.bin", name="other", type="model", run="../../x")
    assert not (tmp_path / "escape").exists()


def test_a_shelf_id_that_climbs_out_of_the_cache_is_refused(
    logged: ms.ArtifactVersion, shelf: ms.Shelf, tmp_path: Path
) -> None:
    storage = shelf.repository.storage
    root = loads(storage.read("modelshelf.json"), "root")
    storage.replace("modelshelf.json", dumps({**root, "id": "../../escape"}))
    before = files_under(tmp_path)
    fresh = ms.Shelf(shelf.url)
    with pytest.raises(ms.IntegrityError, match="malformed id"):
        fresh.get("m").download()
    assert files_under(tmp_path) == before


def test_a_flipped_byte_in_a_manifest_is_detected(
    shelf: ms.Shelf, logged: ms.ArtifactVersion
) -> None:
    storage = shelf.repository.storage
    key = manifest_key(logged.manifest.sha256())
    data = storage.read(key)
    assert b'"w.bin"' in data
    storage.delete(key)
    storage.create(key, data.replace(b'"w.bin"', b'"x.bin"'))
    fresh = ms.Shelf(shelf.url)
    for action in (lambda v: v.verify(), lambda v: v.download(), lambda v: v.files):
        with pytest.raises(ms.IntegrityError, match="does not match its digest"):
            action(fresh.get("m:v0"))


def test_a_replaced_content_digest_is_detected(shelf: ms.Shelf, logged: ms.ArtifactVersion) -> None:
    ref = append_record(shelf, "m", {"digest": "sha256:" + "0" * 64})
    with pytest.raises(ms.IntegrityError, match="does not hold the content"):
        shelf.get(ref).verify()
    with pytest.raises(ms.IntegrityError, match="does not hold the content"):
        shelf.get(ref).download()


def test_verify_and_copy_refuse_paths_that_climb_out(
    shelf: ms.Shelf, logged: ms.ArtifactVersion, tmp_path: Path
) -> None:
    entry = logged.manifest.files["w.bin"].to_json()
    body = json.dumps({"format": 1, "files": {"../../evil": entry}}, sort_keys=True).encode()
    import hashlib

    hexdigest = hashlib.sha256(body).hexdigest()
    shelf.repository.storage.create(manifest_key(hexdigest), body)
    ref = append_record(shelf, "m", {"manifest": hexdigest})
    for action in (
        lambda: shelf.get(ref).verify(),
        lambda: shelf.get(ref).download(tmp_path / "out"),
        lambda: shelf.copy(ref, tmp_path / "target"),
    ):
        with pytest.raises(ms.IntegrityError, match="Refusing the manifest path"):
            action()
    assert not (tmp_path / "evil").exists() and not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("record", [b"[" * 100_000, b'{"a": ' * 50_000, b"\xff\xfe not json"])
def test_odd_records_are_integrity_errors(
    shelf: ms.Shelf, logged: ms.ArtifactVersion, record: bytes
) -> None:
    storage = shelf.repository.storage
    log = SeqLog(storage, ArtifactKeys("m").versions)
    storage.create(log.key(1), record)
    with pytest.raises(ms.IntegrityError, match="not valid JSON"):
        ms.Shelf(shelf.url).get("m:v1")


def test_copy_from_a_bucket_whose_keys_climb_out(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    boto3 = pytest.importorskip("boto3")
    url = make_url("s3", tmp_path, request)
    source = ms.Shelf(url)
    (tmp_path / "w.bin").write_bytes(b"weights")
    with source.run() as run:
        v = run.log_artifact(tmp_path / "w.bin", name="m", type="model")
    bucket, prefix = url[len("s3://") :].split("/", 1)
    escape = f"{prefix}/runs/{v.run_id}/../../../../../../escape.txt"
    boto3.client("s3").put_object(Bucket=bucket, Key=escape, Body=b"attacker's bytes")
    target = tmp_path / "target"
    before = files_under(tmp_path)
    with pytest.raises(ms.IntegrityError, match="Refusing the shelf key"):
        source.copy("m", target)
    written = files_under(tmp_path) - before
    assert all(target in p.parents for p in written), written
    assert not any(p.name == "escape.txt" for p in files_under(tmp_path.parent))


def test_an_oversized_record_is_refused_unread(
    shelf: ms.Shelf, logged: ms.ArtifactVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelshelf._storage import base

    monkeypatch.setattr(base, "MAX_READ_BYTES", 1024 * 1024)  # the real bound is 64 MiB
    storage = shelf.repository.storage
    key = SeqLog(storage, ArtifactKeys("m").versions).key(1)
    storage.create(key, b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    with pytest.raises(ms.IntegrityError, match="larger than 1 MiB"):
        ms.Shelf(shelf.url).get("m:v1")


def test_a_tensor_header_that_lies_about_its_size_is_refused_before_reading(
    shelf: ms.Shelf, tmp_path: Path
) -> None:
    import struct

    def safetensors(header: dict[str, object], data: bytes) -> bytes:
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    path = tmp_path / "w.safetensors"
    path.write_bytes(
        safetensors({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16)
    )
    shelf.log_artifact(path, name="t", type="model")
    for lie in (
        {"dtype": "F32", "shape": [100_000_000, 10_000_000], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]},
        {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": "many", "data_offsets": [0, 16]},
    ):
        path.write_bytes(safetensors({"t": lie}, b"\0" * 16))
        v = shelf.log_artifact(path, name="t", type="model")
        with pytest.raises(ms.IntegrityError, match="the tensor 't'"):
            shelf.diff("t:v0", v.ref)


def test_copying_a_version_whose_blob_is_missing_is_an_integrity_error(
    shelf: ms.Shelf, logged: ms.ArtifactVersion, tmp_path: Path
) -> None:
    digest = logged.files["w.bin"].digest
    assert digest is not None
    shelf.repository.storage.delete(f"blobs/sha256/{digest[7:9]}/{digest[7:]}")
    with pytest.raises(ms.IntegrityError, match="is missing"):
        shelf.copy("m", tmp_path / "target")
    with pytest.raises(ms.NotFoundError):  # nothing was committed there
        ms.Shelf(tmp_path / "target").get("m")


def test_a_file_reference_this_machine_did_not_log_needs_an_opt_in(
    shelf: ms.Shelf, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "home"
    secrets.mkdir()
    (secrets / "id_rsa").write_bytes(b"private key")
    (secrets / "link").symlink_to(tmp_path / "elsewhere.txt")
    (tmp_path / "elsewhere.txt").write_bytes(b"outside the trusted folder")
    v = shelf.log_artifact(ms.Artifact("ref", "dataset").add_reference(f"file://{secrets}/id_rsa"))
    other = shelf.log_artifact(
        ms.Artifact("via-link", "dataset").add_reference(f"file://{secrets}/link")
    )
    assert (v.download() / "id_rsa").read_bytes() == b"private key"  # this machine logged it

    # The same shelf read on a machine that did not log these references.
    monkeypatch.setenv("MODELSHELF_CACHE", str(tmp_path / "another-machine"))
    fresh = ms.Shelf(shelf.url)
    for ref in ("ref:v0", "via-link:v0"):
        with pytest.raises(ms.UnsafeLoadError, match="MODELSHELF_TRUSTED_PATHS"):
            fresh.get(ref).download()
        with pytest.raises(ms.UnsafeLoadError, match="did not log"):
            fresh.get(ref).verify()
    assert not any(p.is_file() for p in (tmp_path / "another-machine").rglob("*/ref/*"))
    monkeypatch.setenv("MODELSHELF_TRUSTED_PATHS", str(secrets))
    assert (fresh.get("ref:v0").download() / "id_rsa").read_bytes() == b"private key"
    with pytest.raises(ms.UnsafeLoadError):  # a symbolic link out of the trusted folder
        fresh.get(other.ref).download()


@pytest.mark.parametrize(
    "change",
    [
        {"started_at": "yesterday"},
        {"started_at": None},
        {"id": "20200101-000000-aaaaaa"},
        {"config": ["not", "a", "dict"]},
        {"job_type": 7},
    ],
)
def test_odd_run_records_are_integrity_errors(
    shelf: ms.Shelf, tmp_path: Path, change: dict[str, object]
) -> None:
    with shelf.run() as run:
        pass
    storage = shelf.repository.storage
    key = f"runs/{run.id}/run.json"
    storage.replace(key, dumps({**loads(storage.read(key), key), **change}))
    fresh = ms.Shelf(shelf.url)
    with pytest.raises(ms.IntegrityError, match="run record"):
        fresh.get_run(run.id)
    with pytest.raises(ms.IntegrityError, match="run record"):
        fresh.runs()


def test_odd_heartbeats_and_alias_events_are_read_safely(
    shelf: ms.Shelf, logged: ms.ArtifactVersion
) -> None:
    storage = shelf.repository.storage
    run_id = logged.run_id
    assert run_id is not None
    record = loads(storage.read(f"runs/{run_id}/run.json"), "run")
    record["environment"] = {"host": "elsewhere", "pid": "v1"}
    storage.replace(f"runs/{run_id}/run.json", dumps(record))
    storage.delete(f"runs/{run_id}/end.json")
    storage.replace(f"runs/{run_id}/heartbeat", b"\xff not a time")
    # An unreadable heartbeat reads as absent: the run counts from its start, moments ago.
    assert ms.Shelf(shelf.url).get_run(run_id).status == "running"
    logged.set_alias("best")
    log = SeqLog(storage, ArtifactKeys("m").aliases)
    n, head = log.head()
    assert head is not None
    storage.create(log.key(n + 1), dumps({**head, "events": [{"alias": "x", "to": "v1"}]}))
    with pytest.raises(ms.IntegrityError, match="alias record"):
        ms.Shelf(shelf.url).alias_history("m")
