"""The web UI's server and the static report, through HTTP (Starlette's TestClient) on a small
shelf: what each page shows against the API, the write guards, and hostile shelf text.
The same pages in a real browser: tests/test_ui_browser.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

pytest.importorskip("starlette")
pytest.importorskip("jinja2")

from starlette.testclient import TestClient

import modelshelf as ms
from modelshelf.ui.app import create_app
from modelshelf.ui.report import write_report
from ui_shelf import HOSTILE, png

BASE = "http://127.0.0.1"
CLI = str(Path(sys.executable).with_name("modelshelf"))


@pytest.fixture(scope="module")
def shelf(tmp_path_factory: pytest.TempPathFactory) -> ms.Shelf:
    """A dataset, three model versions with metrics logged by runs, two predictions tables,
    and an artifact whose text is HTML."""
    root = tmp_path_factory.mktemp("uishelf")
    files = tmp_path_factory.mktemp("uifiles")
    shelf = ms.Shelf(str(root / "shelf"))
    data = files / "data.csv"
    data.write_text("x,y\n1,2\n3,4\n")
    with shelf.run(job_type="prepare") as run:
        run.log_artifact(str(data), name="table", type="dataset")
    for i, (loss, acc) in enumerate([(0.9, 0.60), (0.5, 0.80), (0.7, 0.75)]):
        weights = files / f"w{i}"
        weights.mkdir()
        (weights / "weights.bin").write_bytes(bytes([i]) * 100)
        (weights / "config.json").write_text(json.dumps({"layers": i + 2}))
        with shelf.run(job_type="train", config={"lr": 0.1 / (i + 1), "seed": 0}) as run:
            run.use("table:latest")
            for step in range(3):
                run.log({"loss": loss + (2 - step) / 10}, step=step)
            run.log_artifact(
                str(weights), name="net", type="model",
                metadata={"metrics": {"val_loss": loss, "val_acc": acc}},
            )  # fmt: skip
    for i, changed in enumerate(({}, {2: 9, 5: 1})):
        folder = files / f"pred{i}"
        folder.mkdir()
        rows = ["id,label,prediction"] + [f"{k},{k % 3},{changed.get(k, k % 3)}" for k in range(8)]
        (folder / "predictions.csv").write_text("\n".join(rows) + "\n")
        (folder / "plot.png").write_bytes(png(8 + i, 8))
        (folder / "page.html").write_text("<script>alert(1)</script>")
        with shelf.run(job_type="evaluate") as run:
            run.use(f"net:v{i}")
            run.log_artifact(str(folder), name="preds", type="predictions")
    shelf.get("net:v1").set_alias("production")
    hostile = files / "hostile"
    hostile.mkdir()
    (hostile / "<img src=x onerror=alert(3)>.txt").write_text(HOSTILE)
    shelf.log_artifact(
        str(hostile), name="notes", type="dataset", description=HOSTILE,
        metadata={HOSTILE: HOSTILE}, tags=["x"],
    )  # fmt: skip
    return shelf


def client(shelf: ms.Shelf, **kwargs: Any) -> TestClient:
    return TestClient(create_app(shelf, **kwargs), base_url=BASE, follow_redirects=False)


@pytest.fixture(scope="module")
def reader(shelf: ms.Shelf) -> TestClient:
    return client(shelf)


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.parametrize(
    "url",
    [
        "/",
        "/?q=ne",
        "/a/net",
        "/v/net:production",
        "/v/preds:v1",
        "/compare",
        "/compare?ref=net:v0&ref=net:v2",
        "/compare?ref=net:v0&ref=preds:v0&ref=table:v0",
        "/lineage",
        "/lineage?ref=net:v1&direction=upstream&depth=all",
        "/runs",
        "/runs?job_type=train",
        "/dashboard",
        "/dashboard?type=model&metric=val_acc&mode=max&top=2",
        "/preview?ref=preds:v1&path=predictions.csv",
        "/preview?ref=net:v1&path=config.json",
    ],
)
def test_every_page_renders(reader: TestClient, url: str) -> None:
    response = reader.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "<script>" not in response.text  # no inline script: data goes in JSON blocks


def test_home_lists_each_artifact_with_its_latest_and_aliases(
    shelf: ms.Shelf, reader: TestClient
) -> None:
    html = reader.get("/").text
    for name in shelf.artifacts():
        latest = shelf.get(name)
        row = re.search(
            rf'<tr class="artifact-row" data-name="{re.escape(name)}">(.*?)</tr>', html, re.S
        )
        assert row is not None, name
        cells = text_of(row.group(1))
        assert f"v{latest.version}" in cells
        assert str(len(shelf.versions(name))) in cells
    production = re.search(r'data-name="net">(.*?)</tr>', html, re.S)
    assert production is not None and "production" in production.group(1)
    assert (
        "ne" in reader.get("/?q=pred").text and 'data-name="net"' not in reader.get("/?q=pred").text
    )


def test_version_table_numbers_match_the_api(shelf: ms.Shelf, reader: TestClient) -> None:
    html = reader.get("/a/net").text
    for v in shelf.versions("net"):
        row = re.search(rf'<tr data-ref="{v.ref}">(.*?)</tr>', html, re.S)
        assert row is not None
        shown = dict(re.findall(r'data-metric="(\w+)" data-value="([^"]*)"', row.group(1)))
        assert {k: float(x) for k, x in shown.items()} == v.metadata["metrics"]
        assert v.run_id in row.group(1)
    chart = re.search(
        r'<script type="application/json" id="metric-chart-data">(.*?)</script>', html
    )
    assert chart is not None
    data = json.loads(chart.group(1))
    assert data["x"] == [0, 1, 2]
    assert data["series"]["val_loss"] == [0.9, 0.5, 0.7]


def test_compare_shows_metric_deltas_and_changed_rows(reader: TestClient) -> None:
    html = reader.get("/compare?ref=net:v0&ref=net:v1").text
    row = re.search(r'<tr class="metric" data-metric="val_acc">(.*?)</tr>', html, re.S)
    assert row is not None
    assert "+0.2" in text_of(row.group(1))  # 0.60 -> 0.80
    loss = re.search(r'<tr class="metric" data-metric="val_loss">(.*?)</tr>', html, re.S)
    assert loss is not None and "-0.4" in text_of(loss.group(1))
    assert re.search(r'class="differs"><th>lr</th>', html)
    preds = reader.get("/compare?ref=preds:v0&ref=preds:v1").text
    changed = re.findall(r'<tr class="changed"><td>.*?</td><td class="mono">(\d+)</td>', preds)
    assert sorted(changed, key=int) == ["2", "5"]
    assert "<del>2</del> <ins>9</ins>" in preds


def test_lineage_api_is_the_shelf_lineage_and_explode_adds_every_version(
    shelf: ms.Shelf, reader: TestClient
) -> None:
    got = reader.get("/api/lineage?ref=net:v1&direction=both&depth=all").json()
    assert got == json.loads(json.dumps(shelf.lineage("net:v1").to_dict()))
    exploded = reader.get("/api/explode?artifact=net").json()
    ids = {n["id"] for n in exploded["nodes"]}
    assert {v.ref for v in shelf.versions("net")} <= ids
    assert all(e["from"] in ids and e["to"] in ids for e in exploded["edges"])
    runs = reader.get("/api/explode?job_type=train").json()
    assert sum(n["kind"] == "run" for n in runs["nodes"]) == len(shelf.runs(job_type="train"))
    assert reader.get("/api/explode").status_code == 400
    assert reader.get("/api/lineage?ref=net:v9").status_code == 404


def test_hostile_text_is_escaped_everywhere(reader: TestClient) -> None:
    name = "<img src=x onerror=alert(3)>.txt"
    for url in (
        "/v/notes:v0",
        "/compare?ref=notes:v0&ref=table:v0",
        f"/preview?ref=notes:v0&path={quote(name)}",
    ):
        html = reader.get(url).text
        assert "<script>alert" not in html and "<img src=x" not in html, url
        assert "&lt;script&gt;alert(" in html or "\\u003cscript\\u003e" in html, url


def test_files_from_a_shelf_never_render_as_pages(reader: TestClient) -> None:
    page = reader.get("/file?ref=preds:v0&path=page.html")
    assert page.status_code == 200
    assert page.headers["content-type"] == "application/octet-stream"
    assert page.headers["content-disposition"].startswith("attachment")
    image = reader.get("/file?ref=preds:v0&path=plot.png&inline=1")
    assert image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")
    assert reader.get("/file?ref=preds:v0&path=../../etc/passwd").status_code == 404


def test_errors_are_pages_that_say_what_was_wrong(reader: TestClient) -> None:
    missing = reader.get("/v/net:v42")
    assert missing.status_code == 404 and "net:v42" in text_of(missing.text).replace(" ", "")
    bad = reader.get("/v/bad name")
    assert bad.status_code == 400
    assert reader.get("/dashboard?mode=sideways").status_code == 400
    assert reader.get("/lineage?ref=net:v0&depth=-1").status_code == 400


def test_a_read_only_server_refuses_every_write(shelf: ms.Shelf) -> None:
    app = create_app(shelf)
    c = TestClient(app, base_url=BASE)
    token = app.state.settings.token
    r = c.post(f"/api/alias?token={token}", data={"ref": "net:v0", "alias": "staging"})
    assert r.status_code == 403 and "--allow-writes" in r.text
    assert "staging" not in shelf.get("net:v0").aliases


def test_writes_need_the_token_and_the_csrf_token(shelf: ms.Shelf) -> None:
    app = create_app(shelf, allow_writes=True)
    token, csrf = app.state.settings.token, app.state.settings.csrf
    c = TestClient(app, base_url=BASE, follow_redirects=False)
    form = {"ref": "net:v0", "alias": "staging"}
    assert c.post("/api/alias", data=form).status_code == 403
    assert c.post("/api/alias?token=wrong", data=form).status_code == 403
    assert "staging" not in shelf.get("net:v0").aliases
    # The opening link sets the cookie and takes the token out of the address.
    opened = c.get(f"/a/net?token={token}")
    assert opened.status_code == 303 and opened.headers["location"] == "/a/net"
    assert "httponly" in opened.headers["set-cookie"].lower()
    assert "samesite=strict" in opened.headers["set-cookie"].lower()
    # With the cookie alone (what a forged cross-site form would carry), no CSRF token: refused.
    assert c.post("/api/alias", data=form).status_code == 403
    assert "staging" not in shelf.get("net:v0").aliases
    # A page seen with the cookie carries the CSRF token and the edit forms.
    page = c.get("/v/net:v0").text
    assert f'data-csrf="{csrf}"' in page and 'hx-post="/api/alias"' in page
    moved = c.post("/api/alias", data=form, headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
    assert moved.status_code == 200, moved.text
    assert "staging" in shelf.get("net:v0").aliases
    cross = c.post(
        "/api/unalias", data=form, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.test"}
    )
    assert cross.status_code == 403 and "staging" in shelf.get("net:v0").aliases
    # A script may send the token itself.
    gone = c.post("/api/unalias", data=form, headers={"X-Modelshelf-Token": token})
    assert gone.status_code == 303
    assert "staging" not in shelf.get("net:v0").aliases
    assert shelf.alias_history("net", "staging")[-1].version is None


def test_every_write_from_the_page(shelf: ms.Shelf, tmp_path: Path) -> None:
    copy = ms.Shelf(str(tmp_path / "copy"))
    f = tmp_path / "f.txt"
    f.write_text("one")
    v0 = copy.log_artifact(str(f), name="thing", type="model")
    f.write_text("two")
    copy.log_artifact(str(f), name="thing", type="model")
    app = create_app(copy, allow_writes=True)
    c = TestClient(app, base_url=BASE, follow_redirects=False)
    h = {"X-Modelshelf-Token": app.state.settings.token, "Accept": "application/json"}
    tagged = c.post("/api/tags", data={"ref": "thing:v0", "add": "a, b"}, headers=h)
    assert tagged.status_code == 200
    assert copy.get("thing:v0").tags == ["a", "b"]
    c.post("/api/tags", data={"ref": "thing:v0", "remove": "a"}, headers=h)
    assert copy.get("thing:v0").tags == ["b"]
    c.post("/api/describe", data={"ref": "thing:v0", "text": "first try"}, headers=h)
    assert copy.get("thing:v0").description == "first try"
    c.post("/api/alias", data={"ref": "thing:v0", "alias": "keep"}, headers=h)
    refused = c.post("/api/delete", data={"ref": "thing:v0"}, headers=h)
    assert refused.status_code == 409, refused.text  # it has an alias: force needed
    bad = c.post("/api/alias", data={"ref": "thing:v0", "alias": "v3"}, headers=h)
    assert bad.status_code == 400 and "v3" in bad.text
    done = c.post("/api/delete", data={"ref": "thing:v0", "force": "1"}, headers=h)
    assert done.status_code == 200
    assert [v.version for v in copy.versions("thing")] == [1]
    gc = c.post("/api/gc", data={}, headers=h)
    assert gc.status_code == 200 and "freed" in gc.json()["message"]
    assert v0.ref == "thing:v0"
    assert c.post("/api/frobnicate", data={"ref": "thing:v1"}, headers=h).status_code == 404


def test_requests_for_another_host_are_refused(shelf: ms.Shelf) -> None:
    """DNS rebinding: a page on evil.test resolving to 127.0.0.1 cannot read the shelf."""
    c = TestClient(create_app(shelf), base_url="http://evil.test")
    assert c.get("/").status_code == 400


def test_report_is_one_self_contained_file(shelf: ms.Shelf, tmp_path: Path) -> None:
    path = write_report(shelf, "net:production", tmp_path / "report.html")
    html = path.read_text()
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing loaded from elsewhere
    assert "<link" not in html and 'src="/' not in html
    graph = re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', html)
    assert graph is not None
    assert json.loads(graph.group(1))["root"] == "net:v1"
    assert "net:v0 → net:v1" in html  # the comparison with the version before
    for v in shelf.versions("net"):
        assert f'data-ref="{v.ref}"' in html
    hostile = write_report(shelf, "notes", tmp_path / "notes.html").read_text()
    body = hostile.split("<script>", 1)[0]  # the inlined libraries come after the page
    assert "<img src=x" not in body and "&lt;script&gt;" in body


def test_cli_report_and_ui_help(shelf: ms.Shelf, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    done = subprocess.run(
        [CLI, "--shelf", shelf.url, "report", "net", "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.exists() and "wrote" in done.stdout
    missing = subprocess.run(
        [CLI, "--shelf", shelf.url, "report", "nope", "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 1 and "nope" in missing.stderr
    helped = subprocess.run([CLI, "ui", "--help"], capture_output=True, text=True)
    assert "--allow-writes" in helped.stdout


def test_the_dashboard_follows_every_change_to_an_artifact(tmp_path: Path) -> None:
    """Its rows are kept per artifact while the artifact's folder lists the same keys: a
    metadata change, an alias move, a new version and a deletion each show on the next page."""
    shelf = ms.Shelf(str(tmp_path / "s"))
    f = tmp_path / "f"
    for i in range(3):
        f.write_text(str(i))
        shelf.log_artifact(str(f), name="m", type="model", metadata={"metrics": {"acc": i / 10}})
    c = client(shelf)

    def board() -> list[tuple[str, str]]:
        html = c.get("/dashboard?type=model&metric=acc&mode=max").text
        return re.findall(
            r'<tr data-ref="([^"]+)">.*?<td class="num score">([^<]*)</td>', html, re.S
        )

    assert board() == [("m:v2", "0.2"), ("m:v1", "0.1"), ("m:v0", "0")]
    shelf.get("m:v0").update_metadata({"metrics": {"acc": 0.9}})
    assert board()[0] == ("m:v0", "0.9")
    shelf.get("m:v1").set_alias("production")
    assert "production" in c.get("/dashboard?type=model&metric=acc&mode=max").text
    f.write_text("3")
    shelf.log_artifact(str(f), name="m", type="model", metadata={"metrics": {"acc": 0.95}})
    assert board()[0] == ("m:v3", "0.95")
    shelf.delete("m:v3")
    assert [ref for ref, _ in board()] == ["m:v0", "m:v2", "m:v1"]


def test_binding_beyond_the_loopback_warns(shelf: ms.Shelf) -> None:
    from modelshelf.ui.server import allowed_hosts

    assert allowed_hosts("0.0.0.0") == ["*"]
    assert "10.1.2.3" in allowed_hosts("10.1.2.3") and "127.0.0.1" in allowed_hosts("10.1.2.3")
    proc = subprocess.Popen(
        [CLI, "--shelf", shelf.url, "ui", "--host", "0.0.0.0", "--port", "0"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines = [proc.stderr.readline() for _ in range(3)]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    said = "".join(lines)
    assert "warning: bound to '0.0.0.0'" in said and "anyone who can reach" in said
    assert "read-only" in said and "token=" not in said


def test_a_damaged_artifact_does_not_take_the_home_page_down(tmp_path: Path) -> None:
    from modelshelf._format.layout import ArtifactKeys, record_key
    from modelshelf._format.records import dumps, loads

    shelf = ms.Shelf(str(tmp_path / "s"))
    f = tmp_path / "f"
    for name in ("good", "bad"):
        f.write_text(name)
        shelf.log_artifact(str(f), name=name, type="model")
    storage = shelf.repository.storage
    key = record_key(ArtifactKeys("bad").versions, 0)
    record = loads(storage.read(key), key)
    storage.replace(key, dumps({**record, "version": 7}))  # says it is another version
    page = client(ms.Shelf(shelf.url)).get("/")
    assert page.status_code == 200
    assert 'data-name="good"' in page.text and 'data-name="bad"' not in page.text
    card = re.search(
        r'<section class="card error" id="unreadable">(.*?)</section>', page.text, re.S
    )
    assert card is not None and "bad" in card.group(1) and "bad:v0" in card.group(1)


def test_a_tensor_preview_reads_only_the_header_chunk(tmp_path: Path) -> None:
    """On a local shelf a chunked safetensors file is previewed from its mapped chunks: its
    tensors are listed and the file is not copied into the cache."""
    np = pytest.importorskip("numpy")
    numpy_st = pytest.importorskip("safetensors.numpy")
    from modelshelf._core.download import blob_path

    arrays = {"body.weight": np.ones((512, 768), np.float32), "head.bias": np.zeros(10, np.int64)}
    numpy_st.save_file(arrays, str(tmp_path / "model.safetensors"))
    shelf = ms.Shelf(str(tmp_path / "s"))
    v = shelf.log_artifact(str(tmp_path / "model.safetensors"), name="w", type="model")
    entry = v.files["model.safetensors"]
    assert len(v.manifest.files["model.safetensors"].chunks) > 1
    html = client(shelf).get("/preview?ref=w:v0&path=model.safetensors").text
    rows = re.findall(
        r'<td class="mono">([^<]+)</td><td>(\w+)</td><td class="mono">([^<]+)</td>', html
    )
    assert rows == [("body.weight", "F32", "[512, 768]"), ("head.bias", "I64", "[10]")]
    assert not blob_path(entry.digest.split(":", 1)[1]).exists()
