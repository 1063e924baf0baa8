"""The shelf contract, run against local disk, memory:// and S3 (moto's server)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import modelshelf as ms
from conftest import blob_keys


def test_log_get_download_roundtrip(shelf: ms.Shelf, files: Path, tmp_path: Path) -> None:
    v = shelf.log_artifact(files, name="digits", type="dataset", metadata={"rows": 3})
    assert (v.name, v.version, v.ref, v.type) == ("digits", 0, "digits:v0", "dataset")
    assert v.aliases == ["latest"]
    assert v.metadata == {"rows": 3}
    assert sorted(v.files) == ["config.json", "sub/labels.txt", "weights.bin"]
    assert v.size == sum(f.stat().st_size for f in files.rglob("*") if f.is_file())
    assert v.files["weights.bin"].size == 3 * 1024 * 1024
    assert v.digest.startswith("sha256:")

    got = shelf.get("digits")
    assert got == v and got.created_at == v.created_at
    out = got.download()
    for rel in v.files:
        assert (out / rel).read_bytes() == (files / rel).read_bytes()
    assert got.path("sub/labels.txt").read_text() == "cat\ndog\n"

    mine = got.download(tmp_path / "mine")
    assert mine == tmp_path / "mine"
    assert (mine / "weights.bin").read_bytes() == (files / "weights.bin").read_bytes()
    got.verify()


def test_identical_relog_returns_same_version_and_warns(
    shelf: ms.Shelf, files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v0 = shelf.log_artifact(files, name="m", type="model")
    with caplog.at_level(logging.WARNING, logger="modelshelf"):
        again = shelf.log_artifact(files, name="m", type="model", aliases=["prod"])
    assert again.version == 0 and again.digest == v0.digest
    assert "same content" in caplog.text
    assert shelf.get("m:prod").version == 0
    assert [v.version for v in shelf.versions("m")] == [0]


def test_changing_one_file_stores_only_its_bytes(shelf: ms.Shelf, files: Path) -> None:
    shelf.log_artifact(files, name="m", type="model")
    before = blob_keys(shelf)
    (files / "config.json").write_text('{"lr": 0.01}')
    v1 = shelf.log_artifact(files, name="m", type="model")
    assert v1.version == 1
    added = {k: n for k, n in blob_keys(shelf).items() if k not in before}
    changed_digest = v1.files["config.json"].digest
    assert changed_digest is not None
    assert list(added) == [f"blobs/sha256/{changed_digest[7:9]}/{changed_digest[7:]}"]
    assert sum(added.values()) == (files / "config.json").stat().st_size
    assert shelf.get("m:v0").files["config.json"] != v1.files["config.json"]
    assert shelf.get("m:v0").files["weights.bin"] == v1.files["weights.bin"]


def test_same_bytes_in_two_artifacts_stored_once(shelf: ms.Shelf, files: Path) -> None:
    shelf.log_artifact(files / "weights.bin", name="a", type="model")
    before = blob_keys(shelf)
    shelf.log_artifact(files / "weights.bin", name="b", type="model")
    assert blob_keys(shelf) == before


def test_artifact_builder_files_dirs_and_names(shelf: ms.Shelf, files: Path) -> None:
    art = ms.Artifact("bundle", "dataset", description="three files", metadata={"k": [1, 2]})
    art.add_file(files / "config.json", name="cfg/config.json")
    art.add_dir(files / "sub", name="extra")
    v = shelf.log_artifact(art, aliases=["train"], tags=["v1-data"])
    assert sorted(v.files) == ["cfg/config.json", "extra/labels.txt"]
    assert v.description == "three files" and v.metadata == {"k": [1, 2]}
    assert v.tags == ["v1-data"] and v.aliases == ["latest", "train"]
    with pytest.raises(ms.ConflictError, match="already holds"):
        art.add_file(files / "config.json", name="cfg/config.json")
    with pytest.raises(ms.ConflictError, match="both a file and a folder"):
        art.add_file(files / "config.json", name="cfg")


def test_aliases_move_latest_is_managed_and_history_kept(shelf: ms.Shelf, files: Path) -> None:
    for i in range(4):
        (files / "config.json").write_text(f'{{"lr": {i}}}')
        shelf.log_artifact(files, name="m", type="model")
    assert shelf.get("m").version == 3 and shelf.get("m:latest").version == 3
    shelf.get("m:v1").set_alias("best")
    assert shelf.get("m:best").version == 1
    moved = shelf.get("m:v2").set_alias("best")
    assert moved.aliases == ["best"]
    assert shelf.get("m:best").version == 2
    assert "best" not in shelf.get("m:v1").aliases
    assert shelf.get("m:v3").aliases == ["latest"]

    with pytest.raises(ms.InvalidReferenceError, match="'v3'"):
        shelf.get("m:v0").set_alias("v3")
    with pytest.raises(ms.ConflictError, match="managed"):
        shelf.get("m:v0").set_alias("latest")

    shelf.get("m:v2").remove_alias("best")
    with pytest.raises(ms.NotFoundError, match="no alias 'best'"):
        shelf.get("m:best")
    with pytest.raises(ms.NotFoundError):
        shelf.get("m:v2").remove_alias("best")

    history = shelf.alias_history("m", "best")
    assert [(e.alias, e.previous, e.version) for e in history] == [
        ("best", None, 1),
        ("best", 1, 2),
        ("best", 2, None),
    ]
    assert all(isinstance(e.at, __import__("datetime").datetime) for e in history)
    latest = shelf.alias_history("m", "latest")
    assert [e.version for e in latest] == [0, 1, 2, 3]
    assert len(shelf.alias_history("m")) == 7


def test_alias_records_the_run(shelf: ms.Shelf, files: Path) -> None:
    v = shelf.log_artifact(files, name="m", type="model")
    v.set_alias("prod", run="run-123")
    (event,) = shelf.alias_history("m", "prod")
    assert event.run_id == "run-123"


def test_tags_description_metadata_are_kept(shelf: ms.Shelf, files: Path) -> None:
    v = shelf.log_artifact(files, name="m", type="model", metadata={"acc": 0.5, "epochs": 3})
    v.add_tags("baseline", "cnn").remove_tags("cnn")
    v.set_description("first try")
    v.update_metadata({"acc": 0.75, "notes": {"by": "me"}})
    fresh = ms.Shelf(shelf.url).get("m:v0")
    assert fresh.tags == ["baseline"]
    assert fresh.description == "first try"
    assert fresh.metadata == {"acc": 0.75, "epochs": 3, "notes": {"by": "me"}}
    assert fresh.digest == v.digest  # labels never change the content


def test_versions_and_artifacts_listing(shelf: ms.Shelf, files: Path) -> None:
    shelf.log_artifact(files, name="data", type="dataset")
    shelf.log_artifact(files / "weights.bin", name="team/model", type="model")
    (files / "config.json").write_text("{}")
    shelf.log_artifact(files, name="data", type="dataset")
    assert shelf.artifacts() == ["data", "team/model"]
    assert shelf.artifacts(type="model") == ["team/model"]
    assert shelf.artifacts(project="team") == ["team/model"]
    assert [v.ref for v in shelf.versions("data")] == ["data:v0", "data:v1"]
    assert shelf.get("team/model:v0").files["weights.bin"].size == 3 * 1024 * 1024


def test_type_mismatch_is_a_conflict(shelf: ms.Shelf, files: Path) -> None:
    shelf.log_artifact(files, name="m", type="model")
    with pytest.raises(ms.ConflictError, match="type 'model', not 'dataset'"):
        shelf.log_artifact(files, name="m", type="dataset")


def test_flipped_byte_raises_integrity_error_naming_the_file(shelf: ms.Shelf, files: Path) -> None:
    v = shelf.log_artifact(files, name="m", type="model")
    digest = v.files["weights.bin"].digest
    assert digest is not None
    key = f"blobs/sha256/{digest[7:9]}/{digest[7:]}"
    data = bytearray(shelf.repository.storage.read(key))
    data[1234] ^= 0x01
    shelf.repository.storage.replace(key, bytes(data))

    with pytest.raises(ms.IntegrityError, match=r"weights.bin") as exc:
        v.verify()
    assert exc.value.files == ["weights.bin"]
    with pytest.raises(ms.IntegrityError, match=r"weights.bin"):
        v.download()
    # Other files are still fine, and a fresh log of the same bytes repairs the blob.
    assert v.path("config.json").read_text() == '{"lr": 0.1}'


def test_corrupted_cache_is_refetched(shelf: ms.Shelf, files: Path) -> None:
    v = shelf.log_artifact(files, name="m", type="model")
    path = v.download() / "weights.bin"
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xff")
    os.utime(path, ns=(1, 1))  # even with an old mtime, the ctime/stat change is noticed
    again = v.download(verify=True)
    assert (again / "weights.bin").read_bytes() == (files / "weights.bin").read_bytes()


def test_loads_trust_a_checked_cache_blob_and_verify_hashes_again(
    shelf: ms.Shelf, files: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file a load reads (``path``) is hashed when it enters the cache, not on every load;
    a blob changed since (its mtime or size moves) is hashed, found bad and fetched again;
    ``download(verify=True)`` hashes every cached file whatever its stat data says."""
    from modelshelf._core import hashcache
    from modelshelf._core.download import blob_path

    hashed: list[str] = []
    real = hashcache.sha256_file
    monkeypatch.setattr(hashcache, "sha256_file", lambda p: hashed.append(Path(p).name) or real(p))
    v = shelf.log_artifact(files, name="m", type="model")
    first = v.path("weights.bin")  # fetched into the cache and checked on the way
    hashed.clear()
    for _ in range(3):
        assert shelf.get("m:latest").path("weights.bin").read_bytes() == first.read_bytes()
    assert hashed == []  # hard links to the blob moved its ctime: still trusted

    blob = blob_path(v.manifest.files["weights.bin"].hex or "")  # the cache's copy
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        f.seek(10)
        f.write(b"\xff\xff")
    assert v.path("weights.bin").read_bytes() == (files / "weights.bin").read_bytes()
    assert len(hashed) == 1  # the changed blob was hashed, refused and fetched again

    v.download()  # every file in the cache now
    hashed.clear()
    v.download(verify=True)
    assert len(hashed) == len(v.files)


def test_hostile_manifest_paths_are_refused(shelf: ms.Shelf, files: Path, tmp_path: Path) -> None:
    from modelshelf._format.layout import ArtifactKeys, manifest_key
    from modelshelf._format.manifest import Manifest
    from modelshelf._format.seqlog import SeqLog

    good = shelf.log_artifact(files, name="m", type="model")
    entry = good.manifest.files["config.json"]
    for i, bad in enumerate(["../x", "/etc/evil", "a/../../x"]):
        manifest = Manifest({bad: entry, "ok.json": entry})
        hexdigest = manifest.sha256()
        shelf.repository.storage.create(manifest_key(hexdigest), manifest.to_bytes())
        record = {**good._record, "manifest": hexdigest, "digest": f"sha256:{i:064d}"}
        SeqLog(shelf.repository.storage, ArtifactKeys("m").versions).append(
            lambda n, _h, r=record: {**r, "version": n}
        )
        target = tmp_path / f"dl{i}"
        with pytest.raises(ms.IntegrityError, match="Refusing the manifest path"):
            shelf.get("m").download(target)
        assert not (target / "ok.json").exists()
    assert not (tmp_path / "x").exists() and not Path("/etc/evil").exists()


def test_unknown_names_list_what_exists(shelf: ms.Shelf, files: Path) -> None:
    shelf.log_artifact(files, name="digits-cnn", type="model", aliases=["best"])
    with pytest.raises(ms.NotFoundError, match="digits-cnn") as exc:
        shelf.get("digits")
    assert isinstance(exc.value, LookupError)
    with pytest.raises(ms.NotFoundError, match=r"best, latest.*newest version is v0"):
        shelf.get("digits-cnn:prod")
    with pytest.raises(ms.NotFoundError, match=r"v7 does not exist.*newest version.*v0"):
        shelf.get("digits-cnn:v7")
    with pytest.raises(ms.NotFoundError, match=r"no file 'nope'.*config.json"):
        shelf.get("digits-cnn").path("nope")
    with pytest.raises(ms.NotFoundError, match="empty"):
        ms.Shelf(shelf.url + "-empty").get("anything")


def test_bad_metadata_is_refused_before_anything_is_written(shelf: ms.Shelf, files: Path) -> None:
    for bad in [{"f": object()}, {"x": float("nan")}, {1: "int key"}, ["not", "a", "dict"]]:
        with pytest.raises(ms.InvalidMetadataError) as exc:
            shelf.log_artifact(files, name="m", type="model", metadata=bad)  # type: ignore[arg-type]
        assert isinstance(exc.value, ValueError)
    assert shelf.repository.storage.find("") == []  # not even the root record was written
    v = shelf.log_artifact(files, name="m", type="model")
    with pytest.raises(ms.InvalidMetadataError, match=r"metadata\.a\.b"):
        v.update_metadata({"a": {"b": {1, 2}}})
    assert shelf.get("m").metadata == {}


def test_numpy_and_path_metadata_become_json(shelf: ms.Shelf, files: Path) -> None:
    np = pytest.importorskip("numpy")
    v = shelf.log_artifact(
        files, name="m", type="model", metadata={"acc": np.float32(0.5), "p": Path("/a")}
    )
    assert shelf.get(v.ref).metadata == {"acc": 0.5, "p": "/a"}


def test_file_reference_download_and_verify(shelf: ms.Shelf, files: Path) -> None:
    uri = (files / "weights.bin").as_uri()
    art = ms.Artifact("ref", "dataset").add_reference(uri)
    v = shelf.log_artifact(art)
    info = v.files["weights.bin"]
    assert info.uri == uri and info.size == 3 * 1024 * 1024
    before = blob_keys(shelf)
    assert all(k.split("/")[-1] != info.digest[7:] for k in before)  # type: ignore[index]
    assert v.download().joinpath("weights.bin").read_bytes() == (files / "weights.bin").read_bytes()
    v.verify()
    (files / "weights.bin").write_bytes(b"changed")
    with pytest.raises(ms.IntegrityError, match="changed since it was logged"):
        v.verify()
    (files / "weights.bin").unlink()
    with pytest.raises(ms.IntegrityError, match="no longer exists"):
        v.verify()


def test_folder_reference_expands_to_its_files(shelf: ms.Shelf, files: Path) -> None:
    v = shelf.log_artifact(ms.Artifact("ref", "dataset").add_reference(files.as_uri(), name="raw"))
    assert sorted(v.files) == ["raw/config.json", "raw/sub/labels.txt", "raw/weights.bin"]


def test_bad_references_are_refused(files: Path) -> None:
    art = ms.Artifact("ref", "dataset")
    with pytest.raises(ms.InvalidReferenceError, match="ftp"):
        art.add_reference("ftp://host/file")
    with pytest.raises(ms.InvalidReferenceError, match="Invalid reference URI"):
        art.add_reference("relative/path")
    with pytest.raises(ms.NotFoundError, match="nothing exists"):
        art.add_reference((files / "missing").as_uri())


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_bucket_reference_detects_change(
    shelf: ms.Shelf, scheme: str, request: pytest.FixtureRequest
) -> None:
    from conftest import new_bucket, new_gcs_bucket

    if scheme == "s3":
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        bucket = new_bucket(request.getfixturevalue("s3_endpoint"))
    else:
        import gcsfs

        request.getfixturevalue("gcs_endpoint")
        fs = gcsfs.GCSFileSystem(skip_instance_cache=True)
        bucket = new_gcs_bucket()
    fs.pipe(f"{bucket}/data/train.csv", b"a,b\n1,2\n")
    v = shelf.log_artifact(
        ms.Artifact("ref", "dataset").add_reference(f"{scheme}://{bucket}/data/train.csv")
    )
    entry = v.manifest.files["train.csv"]
    assert entry.ref is not None and entry.ref.get("etag")
    assert v.download().joinpath("train.csv").read_bytes() == b"a,b\n1,2\n"
    v.verify()
    fs.pipe(f"{bucket}/data/train.csv", b"a,b\n1,3\n")
    with pytest.raises(ms.IntegrityError, match="ETag"):
        v.verify()


def test_https_reference(shelf: ms.Shelf, tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    (served / "labels.csv").write_text("id,label\n1,cat\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/labels.csv"
        v = shelf.log_artifact(ms.Artifact("web", "dataset").add_reference(url))
        assert v.files["labels.csv"].size == len("id,label\n1,cat\n")
        assert v.download().joinpath("labels.csv").read_text() == "id,label\n1,cat\n"
        v.verify()
        (served / "labels.csv").write_text("id,label\n1,dog\n")
        with pytest.raises(ms.IntegrityError, match=r"labels.csv"):
            v.verify()
    finally:
        server.shutdown()


def test_versions_sharing_files_share_cache_disk(shelf: ms.Shelf, files: Path) -> None:
    try:
        os.link(files / "config.json", files.parent / "probe")
    except OSError:
        pytest.skip("the cache shares disk through hard links, and this filesystem has none")
    a = shelf.log_artifact(files, name="m", type="model").download()
    (files / "config.json").write_text("{}")
    b = shelf.log_artifact(files, name="m", type="model").download()
    assert os.path.samefile(a / "weights.bin", b / "weights.bin")
    assert not os.path.samefile(a / "config.json", b / "config.json")


def test_shelf_root_records_its_format(shelf: ms.Shelf, files: Path) -> None:
    import json

    shelf.log_artifact(files, name="m", type="model")
    root = json.loads(shelf.repository.storage.read("modelshelf.json"))
    assert root["format"] == 1 and len(root["id"]) == 32
    shelf.repository.storage.replace("modelshelf.json", json.dumps({**root, "format": 99}).encode())
    with pytest.raises(ms.ConflictError, match="format 99"):
        ms.Shelf(shelf.url).get("m")


def test_default_shelf_and_module_helpers(files: Path, tmp_path: Path) -> None:
    v = ms.log_artifact(files, name="m", type="model", aliases=["best"])
    assert ms.get("m:best") == v
    assert ms.shelf().url == str(tmp_path / "default-shelf")


def test_hostile_digests_and_records_are_refused(shelf: ms.Shelf, files: Path) -> None:
    import json

    from modelshelf._format.layout import ArtifactKeys, manifest_key
    from modelshelf._format.seqlog import SeqLog

    good = shelf.log_artifact(files, name="m", type="model")
    escape = "sha256:" + "../" * 8 + "etc/passwd"
    body = {"format": 1, "files": {"x.bin": {"size": 1, "digest": escape}}}
    data = json.dumps(body).encode()
    import hashlib

    hexdigest = hashlib.sha256(data).hexdigest()
    shelf.repository.storage.create(manifest_key(hexdigest), data)
    log = SeqLog(shelf.repository.storage, ArtifactKeys("m").versions)
    log.append(lambda n, _h: {**good._record, "manifest": hexdigest, "version": n})
    with pytest.raises(ms.IntegrityError, match="malformed digest"):
        shelf.get("m:v1").download()
    log.append(lambda n, _h: {**good._record, "name": "../../evil", "version": n})
    with pytest.raises(ms.IntegrityError, match="tampered"):
        shelf.get("m:v2")


def test_latest_in_aliases_is_accepted_when_logging(shelf: ms.Shelf, files: Path) -> None:
    v = shelf.log_artifact(files, name="m", type="model", aliases=["latest", "best"])
    assert v.aliases == ["best", "latest"]


def test_the_record_cache_forgets_its_older_half_when_full() -> None:
    from modelshelf._format.seqlog import RecordCache

    cache = RecordCache(max_records=4)
    for i in range(4):
        cache.put(f"k{i}", b"%d" % i)
    cache.put("k4", b"4")  # full: k0 and k1, the oldest, go
    assert [cache.get(f"k{i}") for i in range(5)] == [None, None, b"2", b"3", b"4"]
