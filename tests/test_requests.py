"""What an S3 shelf costs in requests, counted as s3fs sends them to moto's server.

Resolving a name reads one listing of its folder and the few records it names, however many
versions it has; ``modelshelf ls`` reads each artifact's newest record, not every version.
Deletion markers spare the reads of deleted versions' states, and a shelf without them (an
older release's) still reads right. The figures with a latency per request, and the log
path, are in ``benchmarks/request_counts.py``.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest

import modelshelf as ms
from conftest import new_bucket
from modelshelf._format.layout import ArtifactKeys


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Every request s3fs sends through its client, by operation."""
    s3fs = pytest.importorskip("s3fs")
    counted: collections.Counter[str] = collections.Counter()
    call = s3fs.S3FileSystem._call_s3

    async def counting(self: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        counted[method if isinstance(method, str) else getattr(method, "__name__", "?")] += 1
        return await call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    return counted


@pytest.fixture
def url(s3_endpoint: str, tmp_path: Path) -> str:
    """A shelf with ``m``: 12 versions, ``best`` on v3, v10 and v11 deleted; and ``other``."""
    url = f"s3://{new_bucket(s3_endpoint)}/shelf"
    shelf = ms.Shelf(url)
    f = tmp_path / "w.bin"
    for v in range(12):
        f.write_bytes(b"weights %d" % v)
        shelf.log_artifact(f, name="m", type="model", aliases=["best"] if v == 3 else [])
    shelf.get("m:v4").add_tags("keep")
    for v in (10, 11):
        shelf.delete(f"m:v{v}")
    shelf.log_artifact(f, name="other", type="dataset")
    return url


def test_a_fresh_shelf_resolves_a_name_in_a_fixed_handful_of_requests(
    url: str, calls: collections.Counter[str]
) -> None:
    calls.clear()
    latest = ms.Shelf(url).get("m")
    assert (latest.version, sorted(latest.aliases)) == (9, ["latest"])
    # the root record, one listing, the alias record and the newest live version's record:
    # the deleted v10 and v11 are known from their markers, unread
    assert dict(calls) == {"get_object": 3, "list_objects_v2": 1}

    calls.clear()
    best = ms.Shelf(url).get("m:best")
    assert (best.version, best.aliases) == (3, ["best"])
    assert sum(calls.values()) == 5  # and v3's record, fetched beside v9's

    shelf = ms.Shelf(url)
    shelf.get("m:v4")
    calls.clear()
    again = shelf.get("m:v4")
    assert again.tags == ["keep"]
    assert dict(calls) == {"list_objects_v2": 1}  # records never change: only the listing


def test_versions_read_neither_the_records_nor_the_states_of_deleted_versions(
    url: str, calls: collections.Counter[str]
) -> None:
    calls.clear()
    versions = ms.Shelf(url).versions("m")
    assert [v.version for v in versions] == list(range(10))
    assert versions[4].tags == ["keep"]
    # root, listing, alias record, 10 live records, v4's newest state
    assert calls["get_object"] == 1 + 1 + 10 + 1
    assert calls["list_objects_v2"] == 1


def test_ls_reads_the_newest_record_of_each_artifact_not_every_version(
    url: str, calls: collections.Counter[str]
) -> None:
    repo = ms.Shelf(url).repository
    calls.clear()
    summary = repo.summary("m")
    assert (summary.versions, summary.latest) == (10, 9)
    assert summary.record is not None and summary.record["size"] == len(b"weights 9")
    # root, listing, v4's state (changed, not deleted), v9's record
    assert sum(calls.values()) == 4


def test_a_shelf_without_deletion_markers_reads_the_same(
    url: str, calls: collections.Counter[str]
) -> None:
    """An older release deleted without markers (or a crash came before one): the states
    are read instead, and every answer is the same."""
    storage = ms.Shelf(url).repository.storage
    for v in (10, 11):
        storage.delete(ArtifactKeys("m").deleted_marker(v))
    shelf = ms.Shelf(url)
    assert shelf.get("m").version == 9
    assert [v.version for v in shelf.versions("m")] == list(range(10))
    assert shelf.repository.summary("m").versions == 10
    with pytest.raises(ms.NotFoundError, match="deleted"):
        shelf.get("m:v11")


def test_cli_ls_shows_what_the_versions_say(url: str) -> None:
    from typer.testing import CliRunner

    from modelshelf.cli.commands import app

    result = CliRunner().invoke(app, ["--shelf", url, "ls", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    shelf = ms.Shelf(url)
    for name in ("m", "other"):
        versions = shelf.versions(name)
        last = versions[-1]
        assert rows[name] == {
            "name": name, "type": last.type, "versions": len(versions), "latest": last.ref,
            "size": last.size, "updated": last.created_at.isoformat(),
        }  # fmt: skip


def test_the_web_ui_reads_only_the_heads_again_on_a_bucket(
    url: str, calls: collections.Counter[str]
) -> None:
    """The UI's server keeps one Shelf: a page asked for again reads the listing and the
    records that can move (alias and label heads), never the versions and manifests again."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from modelshelf.ui.app import create_app

    client = TestClient(create_app(ms.Shelf(url)), base_url="http://127.0.0.1")
    calls.clear()
    assert client.get("/a/m").status_code == 200
    cold = sum(calls.values())
    for page in ("/", "/v/m:best", "/compare?ref=m:v0&ref=m:v3", "/runs", "/lineage?ref=m"):
        assert client.get(page).status_code == 200, page
    calls.clear()
    page = client.get("/a/m")
    assert page.status_code == 200 and 'data-ref="m:v9"' in page.text
    warm = sum(calls.values())
    print(f"artifact page of 10 versions: {cold} requests, then {warm}")
    assert warm <= 6 and warm < cold, dict(calls)
