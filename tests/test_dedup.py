"""Tensor-level de-duplication: a safetensors file is stored in chunks cut on tensor
boundaries, so versions share the tensors that did not change; every byte still round-trips
and is verified, chunk by chunk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import modelshelf as ms
from conftest import blob_keys, make_url
from modelshelf._format import safetensors as st
from modelshelf._format.layout import ArtifactKeys, blob_key, manifest_key
from modelshelf._format.seqlog import SeqLog

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

WEIGHTS = "model.safetensors"
WIDTH = 512  # a WIDTH x WIDTH float32 weight is 1 MiB: a chunk of its own


def frozen_body_with_head(seed: int = 0) -> torch.nn.Sequential:
    """Four 1 MiB layers and a small head, the shape of a fine-tune that trains the head."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        *[torch.nn.Linear(WIDTH, WIDTH) for _ in range(4)], torch.nn.Linear(WIDTH, 10)
    )


def nudge_head(model: torch.nn.Sequential) -> None:
    with torch.no_grad():
        model[-1].weight.add_(0.5)
        model[-1].bias.add_(0.5)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@pytest.fixture(params=["local", "memory", "s3", "gcs", "generic"])
def any_shelf(request: pytest.FixtureRequest, tmp_path: Path) -> ms.Shelf:
    return ms.Shelf(make_url(request.param, tmp_path, request))


def test_the_layout_cut_follows_tensor_boundaries() -> None:
    big, small = st.CHUNK_MIN, 100
    # a big tensor alone; a run of small ones together, closed once it reaches the minimum
    assert st.group([small, big, small, small, big]) == [
        range(0, 1), range(1, 2), range(2, 4), range(4, 5)
    ]  # fmt: skip
    many = [st.CHUNK_MIN // 4] * 9
    assert st.group(many) == [range(0, 4), range(4, 8), range(8, 9)]
    assert st.group([small, 0, 0, small]) == [range(0, 4)]  # empty tensors join neighbours
    assert st.group([]) == [range(0, 0)]
    assert st.cut([small, small]) is None  # one chunk: stored whole
    # The header must describe the data exactly, or the file is stored whole.
    good = {"a": {"data_offsets": [0, 4]}, "b": {"data_offsets": [4, 10]}, "__metadata__": {}}
    assert st.tensor_sizes(json.dumps(good).encode(), 10) == [4, 6]
    bad_headers = [
        {"a": {"data_offsets": [0, 4]}, "b": {"data_offsets": [5, 10]}},  # a gap
        {"a": {"data_offsets": [0, 6]}, "b": {"data_offsets": [4, 10]}},  # an overlap
        {"a": {"data_offsets": [0, 4]}},  # ends short of the file
        {"a": {"data_offsets": [True, 10]}},  # not integers
        {"a": {"data_offsets": [0, 10.0]}},
        {"a": {"data_offsets": [-2, 10]}},
        {"a": {"data_offsets": [10, 0]}},
        {"a": "no offsets"},
        ["not", "an", "object"],
    ]
    for header in bad_headers:
        assert st.tensor_sizes(json.dumps(header).encode(), 10) is None, header
    assert st.tensor_sizes(b"\xff{not json", 10) is None
    assert st.header_length((2**62).to_bytes(8, "little"), 10**6) is None
    assert st.header_length(b"\x10\x00", 10**6) is None


def test_a_head_only_checkpoint_stores_only_the_head(any_shelf: ms.Shelf) -> None:
    model = frozen_body_with_head()
    v0 = any_shelf.log_model(model, name="ft")
    entry = v0.manifest.files[WEIGHTS]
    tensors = list(model.state_dict().values())
    # header, then 4 x [weight] [bias]; the last bias rides with the head (small tensors)
    assert len(entry.chunks) == 9
    assert sum(n for _, n in entry.chunks) == entry.size
    assert [n for _, n in entry.chunks][1:8] == [nbytes(t) for t in tensors[:7]]
    before = blob_keys(any_shelf)

    nudge_head(model)
    v1 = any_shelf.log_model(model, name="ft")
    added = {k: n for k, n in blob_keys(any_shelf).items() if k not in before}
    assert sum(added.values()) == sum(nbytes(t) for t in tensors[7:])  # last bias + head
    assert v1.manifest.files[WEIGHTS].chunks[:8] == entry.chunks[:8]

    for version, seed_model in ((v0, frozen_body_with_head()), (v1, model)):
        loaded = any_shelf.load_model(version.ref, model=frozen_body_with_head(seed=1))
        for a, b in zip(
            loaded.state_dict().values(), seed_model.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b)
        version.verify()
    # The downloaded file is byte for byte the safetensors file of the model.
    path = v1.download() / WEIGHTS
    assert hashlib.sha256(path.read_bytes()).hexdigest() == v1.manifest.files[WEIGHTS].hex
    assert safetensors_torch.load_file(str(path)).keys() == model.state_dict().keys()


def test_a_relog_of_an_unchanged_model_writes_nothing(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    model = frozen_body_with_head()
    v0 = shelf.log_model(model, name="m")
    blobs = {p: os.stat(p).st_ino for p in (tmp_path / "shelf" / "blobs").rglob("*") if p.is_file()}
    again = shelf.log_model(model, name="m")
    assert again.version == v0.version
    after = {p: os.stat(p).st_ino for p in (tmp_path / "shelf" / "blobs").rglob("*") if p.is_file()}
    assert after == blobs  # no blob written again (a rewrite would be a new inode)
    assert not list((tmp_path / "shelf" / "tmp").glob("*"))


def test_a_lora_style_file_shares_everything_but_its_adapters(tmp_path: Path) -> None:
    """A safetensors file logged with log_artifact (written by safetensors itself, in its own
    tensor order): small adapters between large frozen weights change, nothing else."""
    shelf = ms.Shelf(tmp_path / "shelf")
    torch.manual_seed(0)
    state = {}
    for layer in range(3):
        state[f"l{layer}.weight"] = torch.randn(WIDTH, WIDTH)
        state[f"l{layer}.lora_A"] = torch.randn(8, WIDTH)
        state[f"l{layer}.lora_B"] = torch.zeros(WIDTH, 8)
    path = tmp_path / "adapter.safetensors"
    safetensors_torch.save_file(state, str(path))
    v0 = shelf.log_artifact(path, name="lora", type="model")
    assert len(v0.manifest.files["adapter.safetensors"].chunks) > 1
    before = blob_keys(shelf)
    for name in state:
        if "lora" in name:
            state[name] = state[name] + 1
    safetensors_torch.save_file(state, str(path))
    v1 = shelf.log_artifact(path, name="lora", type="model")
    added = sum(n for k, n in blob_keys(shelf).items() if k not in before)
    adapters = sum(nbytes(t) for n, t in state.items() if "lora" in n)
    assert adapters <= added <= adapters + 4096  # plus, at most, the header's chunk
    assert (v1.download() / "adapter.safetensors").read_bytes() == path.read_bytes()
    v0.verify()
    v1.verify()


def test_files_that_are_not_safetensors_layouts_are_stored_whole(tmp_path: Path) -> None:
    """A header that does not describe its file exactly (a gap, or any other format) is
    not cut; the file is stored and read back as it is."""
    shelf = ms.Shelf(tmp_path / "shelf")
    header = json.dumps({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}).encode()
    liar = tmp_path / "liar.safetensors"
    liar.write_bytes(len(header).to_bytes(8, "little") + header + os.urandom(3 * st.CHUNK_MIN))
    other = tmp_path / "random.bin"
    other.write_bytes(os.urandom(3 * st.CHUNK_MIN))
    for path in (liar, other):
        v = shelf.log_artifact(path, name=path.stem, type="model")
        assert v.manifest.files[path.name].chunks == ()
        assert (v.download() / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("backend", ["local", "s3", "gcs"])
def test_a_damaged_chunk_is_named_and_nothing_damaged_is_kept(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Locally each chunk streams; from a bucket the next ones are fetched ahead. Either way
    the damaged chunk is named, and nothing of the file is kept."""
    shelf = ms.Shelf(make_url(backend, tmp_path, request))
    storage = shelf.repository.storage
    v = shelf.log_model(frozen_body_with_head(), name="m")
    key = blob_key(v.manifest.files[WEIGHTS].chunks[3][0].split(":", 1)[1])
    data = bytearray(storage.read(key))
    data[100] ^= 0xFF
    storage.replace(key, bytes(data))

    with pytest.raises(ms.IntegrityError, match=r"chunk 4 of 9 of 'model.safetensors'") as info:
        v.verify()
    assert info.value.files == [WEIGHTS]
    with pytest.raises(ms.IntegrityError, match="chunk 4 of 9"):
        v.download(tmp_path / "out")
    assert not (tmp_path / "out" / WEIGHTS).exists()
    with pytest.raises(ms.IntegrityError, match="chunk 4 of 9"):
        shelf.load_model(v.ref, model=frozen_body_with_head())
    assert not list((tmp_path / "cache").rglob("*.part"))

    storage.replace(key, bytes(data[:-7]))  # truncated
    with pytest.raises(ms.IntegrityError, match="chunk 4 of 9"):
        v.verify()
    storage.delete(key)  # gone
    with pytest.raises(ms.IntegrityError, match="missing from the shelf"):
        v.verify()
    assert not shelf.fsck().ok


def test_chunks_fetched_ahead_and_streamed_mix_in_order(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a bucket, chunks up to a size are fetched ahead and larger ones stream in their
    turn; the file comes out whole and in order either way."""
    from modelshelf._core import download

    shelf = ms.Shelf(make_url("s3", tmp_path, request))
    model = frozen_body_with_head()
    v = shelf.log_model(model, name="m")
    # the 1 MiB weights stream, the small chunks between them are fetched ahead, two at once
    monkeypatch.setattr(download, "PREFETCH_CHUNK", st.CHUNK_MIN - 1)
    monkeypatch.setattr(download, "REMOTE_FETCHES", 2)
    path = v.download(tmp_path / "out") / WEIGHTS
    assert hashlib.sha256(path.read_bytes()).hexdigest() == v.manifest.files[WEIGHTS].hex
    loaded = safetensors_torch.load_file(str(path))
    assert all(torch.equal(loaded[k], t) for k, t in model.state_dict().items())


def test_chunks_that_do_not_make_up_the_file_are_refused(tmp_path: Path) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    v = shelf.log_model(frozen_body_with_head(), name="m")
    storage = shelf.repository.storage
    entry = v.manifest.files[WEIGHTS].to_json()
    for chunks in (entry["chunks"][:-1], [*entry["chunks"], entry["chunks"][0]]):
        body = json.dumps(
            {"format": 1, "files": {WEIGHTS: {**entry, "chunks": chunks}}}, sort_keys=True
        ).encode()
        hexdigest = hashlib.sha256(body).hexdigest()
        storage.create(manifest_key(hexdigest), body)
        # The version record a hostile writer could add: v0's, with that manifest.
        log = SeqLog(storage, ArtifactKeys("m").versions)
        base = log.get(0)
        assert base is not None
        n, _ = log.append(
            lambda n, _h, base=base, m=hexdigest: {**base, "manifest": m, "version": n}
        )
        ref = f"m:v{n}"
        with pytest.raises(ms.IntegrityError, match="chunks that do not make up"):
            shelf.get(ref).verify()


def test_gc_and_copy_follow_chunks(tmp_path: Path) -> None:
    """Deleting a version frees only the chunks no other version holds; a copy to another
    shelf sends each chunk once and verifies there."""
    shelf = ms.Shelf(tmp_path / "shelf")
    model = frozen_body_with_head()
    v0 = shelf.log_model(model, name="m")
    nudge_head(model)
    v1 = shelf.log_model(model, name="m")
    v0_only = set(v0.manifest.blob_hexes()) - set(v1.manifest.blob_hexes())
    assert len(v0_only) == 1
    shelf.delete("m:v0")
    shelf.gc(grace_period=0)
    left = {k.rsplit("/", 1)[1] for k in blob_keys(shelf)}
    assert not (v0_only & left) and v1.manifest.blob_hexes() <= left
    shelf.get("m:v1").verify()

    target = ms.Shelf(tmp_path / "target")
    (copied,) = shelf.copy("m:v1", target)
    copied.verify()
    assert copied.manifest.files[WEIGHTS] == v1.manifest.files[WEIGHTS]
    assert {k.rsplit("/", 1)[1] for k in blob_keys(target)} == v1.manifest.blob_hexes()


def test_show_reports_what_a_version_shares(tmp_path: Path) -> None:
    from test_cli import cli

    root = tmp_path / "shelf"
    shelf = ms.Shelf(root)
    model = frozen_body_with_head()
    shelf.log_model(model, name="m")
    nudge_head(model)
    v1 = shelf.log_model(model, name="m")
    size = v1.manifest.files[WEIGHTS].size
    last_chunk = v1.manifest.files[WEIGHTS].chunks[-1][1]

    storage = json.loads(cli("show", "m:v1", "--json", shelf=root).stdout)["storage"]
    assert storage == {
        "blobs": 9,
        "stored_bytes": size,
        "own_bytes": last_chunk,
        "artifact_bytes": 2 * size,
        "artifact_stored_bytes": size + last_chunk,
        "dedup_ratio": round(2 * size / (size + last_chunk), 3),
    }
    text = cli("show", "m:v1", shelf=root).stdout
    assert "stored: 9 blobs" in text and "shared with other versions" in text
    assert f"({storage['dedup_ratio']:.2f}x)" in text


def test_a_relogged_local_file_is_not_read_again(tmp_path: Path) -> None:
    """The stat cache knows an unchanged file's digest, and the hash cache its chunks: a
    re-log checks that the chunks are on the shelf and reads nothing."""
    import time

    from modelshelf._core.sources import LocalFile

    shelf = ms.Shelf(tmp_path / "shelf")
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(frozen_body_with_head().state_dict(), str(path))
    time.sleep(1.1)  # older than the stat cache's racy window, as files are in real use
    v0 = shelf.log_artifact(path, name="m", type="model")
    entry = v0.manifest.files[path.name]
    source = LocalFile(path)
    assert source._known_chunks(shelf.repository, os.stat(path)) == entry
    assert shelf.log_artifact(path, name="m", type="model").version == 0

    blob = tmp_path / "shelf" / blob_key(entry.chunks[2][0].split(":", 1)[1])
    data = blob.read_bytes()
    blob.unlink()  # a chunk gone: the file is read and stored again
    assert source._known_chunks(shelf.repository, os.stat(path)) is None
    assert shelf.log_artifact(path, name="m", type="model").version == 0
    assert blob.read_bytes() == data
    path.write_bytes(path.read_bytes())  # touched: the stat data no longer match
    assert source._known_chunks(shelf.repository, os.stat(path)) is None


def test_a_local_shelf_loads_chunks_straight_from_its_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No copy of the whole file enters the cache; each chunk is hashed once, then trusted
    by its stat data; a chunk changed after that is hashed again and refused."""
    from modelshelf._core import download, hashcache

    shelf = ms.Shelf(str(tmp_path / "shelf"))
    model = frozen_body_with_head()
    v = shelf.log_model(model, name="m")
    entry = v.manifest.files[WEIGHTS]
    storage = shelf.repository.storage
    hashed: list[int] = []
    add = download._ChunkCheck.add
    monkeypatch.setattr(
        download._ChunkCheck, "add", lambda self, buf: hashed.append(len(buf)) or add(self, buf)
    )

    got = shelf.load_model(v.ref, model=frozen_body_with_head(seed=1))
    for name, tensor in model.state_dict().items():
        assert torch.equal(got.state_dict()[name], tensor), name
    assert not download.blob_path(entry.hex).exists()  # never assembled in the cache
    assert sum(hashed) == entry.size  # every chunk hashed once, as it was read
    chunks = [(storage.local_file(blob_key(d.split(":", 1)[1])), d) for d, _ in entry.chunks]
    assert all(hashcache.trusted_shelf_blob(p, d, os.stat(p)) for p, d in chunks)

    hashed.clear()
    again = shelf.load_model(v.ref, model=frozen_body_with_head(seed=2))
    assert torch.equal(again[0].weight, model[0].weight)
    assert hashed == []  # trusted by stat data: read, not hashed
    with torch.no_grad():  # the chunks are mapped privately: training on never reaches a blob
        again[0].weight.add_(1.0)
    v.verify()

    path = chunks[2][0]
    before = os.stat(path)
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))  # same size, new mtime: no longer trusted
    with pytest.raises(ms.IntegrityError, match=r"chunk 3 of \d+ of 'model.safetensors'"):
        shelf.load_model(v.ref, model=frozen_body_with_head(seed=1))

    # Whoever can write the shelf can set the mtime back too; the ctime says it changed.
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    os.chmod(path, 0o444)
    shelf.load_model(v.ref, model=frozen_body_with_head(seed=1))  # right again: trusted anew
    trusted = os.stat(path)
    data[20] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(trusted.st_atime_ns, trusted.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (
        before.st_size, trusted.st_mtime_ns
    )  # fmt: skip
    with pytest.raises(ms.IntegrityError, match=r"chunk 3 of \d+ of 'model.safetensors'"):
        shelf.load_model(v.ref, model=frozen_body_with_head(seed=1))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/{fd,maps}")
def test_a_torch_load_maps_each_chunk_without_holding_a_file_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyTorch's private maps close their descriptor (Python's mmap keeps one per map), so
    a model of any number of chunks is mapped, not read, and each map goes with its tensors."""
    import gc

    from modelshelf._core import download
    from modelshelf._models import torch_format as tf

    shelf_dir = tmp_path / "shelf"
    shelf = ms.Shelf(str(shelf_dir))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512, bias=False) for _ in range(12)])
    v = shelf.log_model(model, name="m")
    chunks_stored = len(v.manifest.files[WEIGHTS].chunks)
    assert chunks_stored >= 12
    monkeypatch.setattr(download, "_mappable_chunks", lambda: 0)  # as if few files could open

    def mapped_blobs() -> set[str]:
        with open("/proc/self/maps") as f:
            return {line.split()[-1] for line in f if str(shelf_dir) in line}

    fds = len(os.listdir("/proc/self/fd"))
    chunks = download.chunks_from_shelf(v, WEIGHTS, map_file=tf.map_private)
    assert chunks is not None
    state = tf.state_from_chunks(chunks)
    # Python's maps would hold one descriptor per chunk; another thread of the test process
    # may open or close one meanwhile, so only a growth by the chunks' count is refused.
    assert state is not None and len(os.listdir("/proc/self/fd")) - fds < chunks_stored // 2
    assert len(mapped_blobs()) == chunks_stored  # mapped, every one, none read
    del chunks
    gc.collect()
    assert len(mapped_blobs()) == chunks_stored - 1  # the header's went: no tensor views it
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    del state
    gc.collect()
    assert mapped_blobs() == set()  # released with the last tensor

    got = shelf.load_model(v.ref, model=torch.nn.Sequential(
        *[torch.nn.Linear(512, 512, bias=False) for _ in range(12)]
    ))  # fmt: skip
    assert torch.equal(got[5].weight, model[5].weight)
    v.verify()


def test_chunks_are_read_not_mapped_on_a_network_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a blob may vanish under a mapping (NFS, FUSE: Colab's Drive), chunks are read
    into memory; the load is the same."""
    from modelshelf._storage.local import networked

    mounts = "/dev/sda1 / ext4 rw 0 0\nserver:/x /mnt/team nfs4 rw 0 0\n"
    mounts += "drive /content/drive fuse.drive rw 0 0\n/dev/sdb /mnt/team/scratch ext4 rw 0 0\n"
    assert networked(Path("/mnt/team/shelf"), mounts)
    assert networked(Path("/content/drive/MyDrive/shelf"), mounts)
    assert not networked(Path("/mnt/team/scratch/shelf"), mounts)  # a local disk inside
    assert not networked(Path("/mnt/teams"), mounts)
    assert not networked(Path("/home/me/shelf"), mounts)

    import mmap

    from modelshelf._core import download

    shelf = ms.Shelf(str(tmp_path / "shelf"))
    model = frozen_body_with_head()
    v = shelf.log_model(model, name="m")
    assert shelf.repository.storage.maps_safely  # this machine's temporary folder
    chunks = download.chunks_from_shelf(v, WEIGHTS)
    assert chunks is not None and all(isinstance(c, mmap.mmap) for c in chunks)
    monkeypatch.setattr(shelf.repository.storage, "maps_safely", False)
    chunks = download.chunks_from_shelf(v, WEIGHTS)
    assert chunks is not None and all(isinstance(c, bytearray) for c in chunks)
    got = shelf.load_model(v.ref, model=frozen_body_with_head(seed=1))
    for name, tensor in model.state_dict().items():
        assert torch.equal(got.state_dict()[name], tensor), name
    # Each map holds a file descriptor: a file of more chunks than an eighth of the limit on
    # open files is read, not mapped.
    monkeypatch.setattr(shelf.repository.storage, "maps_safely", True)
    monkeypatch.setattr(download, "_mappable_chunks", lambda: len(chunks) - 1)
    read = download.chunks_from_shelf(v, WEIGHTS)
    assert read is not None and all(isinstance(c, bytearray) for c in read)
