"""Shared fixtures: an isolated cache, a real S3 API (moto's server), and one shelf per backend."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import flakyfs
import modelshelf as ms

#: ``generic`` is local disk seen through a plain fsspec filesystem (``flaky://`` with no
#: faults): the storage path every filesystem that is not local, an object store or memory takes.
BACKENDS = ["local", "memory", "s3", "gcs", "generic"]
flakyfs.register()

# gcsfs's experimental zonal-bucket probe speaks gRPC, which gcp-storage-emulator does not; it
# is read when gcsfs is imported, so it is set before anything imports it.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

#: Prepended to a child process's script so that it knows the ``flaky://`` backend too.
CHILD_PRELUDE = (
    f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
    "import flakyfs; flakyfs.register()\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server in its own process on 127.0.0.1; s3fs reaches it through the env."""
    pytest.importorskip("s3fs")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _wait_for_port(port, proc, "moto's S3 server")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        _restore(saved)


@pytest.fixture(scope="session")
def gcs_endpoint() -> Iterator[str]:
    """gcp-storage-emulator in its own process on 127.0.0.1, with GCS's create-if-absent
    precondition (tests/gcs_emulator.py); gcsfs reaches it through STORAGE_EMULATOR_HOST."""
    pytest.importorskip("gcsfs")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "gcs_emulator.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {"STORAGE_EMULATOR_HOST": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _wait_for_port(port, proc, "gcp-storage-emulator")
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        _restore(saved)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.1)


def _restore(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def new_gcs_bucket() -> str:
    import gcsfs

    fs = gcsfs.GCSFileSystem(skip_instance_cache=True)
    bucket = f"shelf-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return bucket


def new_bucket(endpoint: str) -> str:
    import s3fs

    fs = s3fs.S3FileSystem(anon=False, skip_instance_cache=True)
    bucket = f"shelf-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return bucket


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own download cache and default shelf."""
    monkeypatch.setenv("MODELSHELF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSHELF_ROOT", str(tmp_path / "default-shelf"))


def make_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if backend == "local":
        return str(tmp_path / "shelf")
    if backend == "memory":
        return f"memory://shelf-{uuid.uuid4().hex}"
    if backend == "generic":
        return f"flaky://{tmp_path}/shelf"
    if backend == "gcs":
        request.getfixturevalue("gcs_endpoint")
        return f"gs://{new_gcs_bucket()}/team/shelf"
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://{new_bucket(endpoint)}/team/shelf"


@pytest.fixture(params=BACKENDS)
def shelf_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return make_url(request.param, tmp_path, request)


@pytest.fixture
def shelf(shelf_url: str) -> ms.Shelf:
    return ms.Shelf(shelf_url)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A folder of three files: two small, one of 3 MiB."""
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"lr": 0.1}')
    (root / "sub" / "labels.txt").write_text("cat\ndog\n")
    (root / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    return root


def blob_keys(shelf: ms.Shelf) -> dict[str, int]:
    """Every blob on the shelf and its size."""
    storage = shelf.repository.storage
    return {k: storage.size(k) for k in storage.find("blobs")}


def run_python(
    code: str, *args: str, timeout: float = 300, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with this environment; fail loudly on error."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        **kwargs,  # type: ignore[call-overload]
    )
    assert proc.returncode == 0, (
        f"subprocess failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    return proc
