"""The web UI in a real browser: Debian's Chromium, headless, driven by Playwright, against
`modelshelf ui` running as its own process over a shelf made by the demo and the pipeline
example (plus predictions tables and hostile text: tests/ui_shelf.py).

Screenshots of every page go to build/ui-screenshots/ (look at them).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
sync_api = pytest.importorskip("playwright.sync_api")

import modelshelf as ms  # noqa: E402
import ui_shelf  # noqa: E402
from modelshelf._features.diff import metrics_of  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "build" / "ui-screenshots"
CLI = str(Path(sys.executable).with_name("modelshelf"))


def chromium() -> str:
    """The system Chromium (Playwright's own download cannot be reached from here)."""
    found = os.environ.get("MODELSHELF_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
    )
    if found is None:
        pytest.fail(
            "No Chromium to test the web UI with. Install Debian's: "
            "`sudo apt-get install chromium` (make test does this when run as root), "
            "or point MODELSHELF_CHROMIUM at a Chromium binary."
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("uishelf") / "shelf"
    ui_shelf.build(where, tmp_path_factory.mktemp("uifiles"))
    return where


class Server:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [CLI, "--shelf", str(root), "ui", "--port", str(self.port), "--allow-writes"],
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.link = ""
        for line in self.proc.stderr:
            found = re.search(r"(http://\S+\?token=\S+)", line)
            if found:
                self.link = found.group(1)
                break
        assert self.link, "the server printed no link with a token"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the server did not start listening")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Server]:
    s = Server(root)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        # No sandbox (tests run as root in a container); no GPU (software rendering only,
        # which a headless machine has anyway); shared memory through files, not /dev/shm.
        b = p.chromium.launch(
            executable_path=chromium(),
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


class Watched:
    """A page whose console errors, uncaught exceptions, failed requests and dialogs are
    collected: a test fails on any."""

    def __init__(self, context: Any) -> None:
        self.page = context.new_page()
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        self.page.on("requestfailed", self._failed)
        self.page.on(
            "response",
            lambda r: (
                self.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None
            ),
        )
        self.page.on("dialog", self._dialog)
        self.page.on("crash", lambda _: self.problems.append("the page crashed"))

    def _failed(self, request: Any) -> None:
        # A navigation cancels what the page before it was still loading (its favicon): that
        # is the browser's doing, not an error of the page.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"failed: {request.url} ({request.failure})")

    def _dialog(self, dialog: Any) -> None:
        if dialog.type == "confirm":  # the delete button asks first
            dialog.accept()
            return
        self.problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    def shot(self, name: str) -> None:
        """A screenshot of the whole page; of the window only where the page is a graph
        sized to the window (a full-page capture resizes the window, and the graph with it,
        while it is taken)."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        whole = not self.page.locator("#graph").count()
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=whole)


@pytest.fixture
def writer(browser: Any, server: Server) -> Iterator[Watched]:
    """A browser that opened the link the server printed (it holds the token cookie)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    w = Watched(context)
    w.page.goto(server.link)
    yield w
    context.close()
    assert w.problems == []


@pytest.fixture
def visitor(browser: Any, server: Server) -> Iterator[Watched]:
    """A browser that did not: it may read, not write."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    yield Watched(context)
    context.close()


PAGES = {
    "home": "/",
    "artifact": "/a/digits-cnn",
    "version": "/v/digits-cnn:best",
    "version-predictions": "/v/cnn-predictions:v1",
    "compare": "/compare?ref=digits-cnn:v0&ref=digits-cnn:v5",
    "compare-predictions": "/compare?ref=cnn-predictions:v0&ref=cnn-predictions:v1",
    "lineage": "/lineage?ref=digits-classifier:production&depth=all",
    "runs": "/runs",
    "run": None,  # the newest train run, found below
    "dashboard": "/dashboard?type=model&metric=val_acc&mode=max&top=5",
    "hostile": "/v/notes:v0",
}


def test_every_page_renders_without_errors(writer: Watched, server: Server, root: Path) -> None:
    shelf = ms.Shelf(str(root))
    pages = dict(PAGES, run=f"/runs/{shelf.runs(job_type='train')[-1].id}")
    for name, url in pages.items():
        writer.page.goto(server.url + url)
        writer.page.wait_for_load_state("networkidle")
        assert writer.page.locator("main").inner_text().strip(), name
        assert "error" not in writer.page.title().lower(), name
        writer.shot(name)
    writer.page.goto(server.url + "/v/digits-cnn:best")
    writer.page.get_by_role("link", name="preview").first.click()
    writer.page.wait_for_selector(".preview-body table.tensors")
    writer.shot("version-tensor-preview")
    assert writer.problems == []


def test_version_table_matches_the_api(visitor: Watched, server: Server, root: Path) -> None:
    page = visitor.page
    page.goto(server.url + "/a/digits-cnn")
    versions = ms.Shelf(str(root)).versions("digits-cnn")
    rows = page.locator("table#versions tbody tr")
    assert rows.count() == len(versions)
    for v in versions:
        row = page.locator(f'tr[data-ref="{v.ref}"]')
        shown = {
            cell.get_attribute("data-metric"): float(cell.get_attribute("data-value"))
            for cell in row.locator("td[data-metric]").all()
        }
        assert shown == pytest.approx(metrics_of(v))
        assert set(row.locator("td").nth(2).inner_text().split()) == set(v.aliases)
    # Sorting by a metric column orders the rows by it.
    page.get_by_role("columnheader", name="val_loss").click()
    refs = [r.get_attribute("data-ref") for r in rows.all()]
    by_loss = sorted(versions, key=lambda v: metrics_of(v)["val_loss"])
    assert refs == [v.ref for v in by_loss]
    assert page.locator("#metric-chart canvas").count() == 1
    assert visitor.problems == []


def test_compare_from_the_table_shows_the_right_deltas(
    visitor: Watched, server: Server, root: Path
) -> None:
    page = visitor.page
    page.goto(server.url + "/a/digits-cnn")
    button = page.locator(".compare-button")
    assert button.is_disabled()
    page.get_by_label("Select digits-cnn:v0").check()
    page.get_by_label("Select digits-cnn:v5").check()
    button.click()
    page.wait_for_url(re.compile(r"/compare\?"))
    shelf = ms.Shelf(str(root))
    a, b = metrics_of(shelf.get("digits-cnn:v0")), metrics_of(shelf.get("digits-cnn:v5"))
    for metric in ("val_loss", "val_acc"):
        delta = page.locator(f'tr.metric[data-metric="{metric}"] .delta').inner_text()
        assert delta == f"{b[metric] - a[metric]:+.4g}"
    assert page.locator("table.tensors tbody tr").count() >= 1  # the weights changed
    visitor.shot("compare-from-table")
    assert visitor.problems == []


def tap(page: Any, node: str) -> None:
    """Click a node of the lineage graph (as Cytoscape sees a click). The script returns
    nothing: Playwright would otherwise serialise the whole graph it returns (seconds)."""
    page.evaluate("id => { window.modelshelfGraph.getElementById(id).emit('tap'); }", node)


def graph_state(page: Any) -> dict[str, Any]:
    return page.evaluate(
        """() => {
            const cy = window.modelshelfGraph;
            return {
                nodes: cy.nodes().map((n) => n.id()).sort(),
                edges: cy.edges().map((e) => [e.source().id(), e.target().id(), e.data('kind')]),
            };
        }"""
    )


def test_lineage_graph_is_the_api_graph_and_explodes(
    writer: Watched, server: Server, root: Path
) -> None:
    page = writer.page
    shelf = ms.Shelf(str(root))
    page.goto(server.url + "/lineage?ref=digits-classifier:production&depth=all")
    page.wait_for_function("() => document.querySelector('#graph').dataset.nodes")
    expected = shelf.lineage("digits-classifier:production").to_dict()
    state = graph_state(page)
    assert state["nodes"] == sorted(n["id"] for n in expected["nodes"])
    assert sorted(map(tuple, state["edges"])) == sorted(
        (e["from"], e["to"], e["kind"]) for e in expected["edges"]
    )
    # Explode the dataset: every version of it, and the runs that made and used each.
    dataset = next(n["id"] for n in expected["nodes"] if n.get("name") == "digits")
    tap(page, dataset)
    page.get_by_role("button", name="Explode artifact").click()
    users = {f"run:{r.id}" for r in shelf.get("digits:v0").used_by()}
    page.wait_for_function(
        "n => window.modelshelfGraph.nodes().length > n", arg=len(state["nodes"])
    )
    exploded = graph_state(page)
    assert users <= set(exploded["nodes"])
    writer.shot("lineage-exploded")
    # Collapse the train runs into one node; expand them again.
    job = "train"
    same_job = [
        n
        for n in exploded["nodes"]
        if n.startswith("run:") and shelf.get_run(n[4:]).job_type == job
    ]
    assert len(same_job) >= 2  # the pipeline's two trainings and the demo's
    run = same_job[0]
    tap(page, run)
    page.get_by_role("button", name="Collapse job type").click()
    collapsed = graph_state(page)
    assert f"group:job:{job}" in collapsed["nodes"]
    assert not set(same_job) & set(collapsed["nodes"])
    assert len(collapsed["nodes"]) == len(exploded["nodes"]) - len(same_job) + 1
    writer.shot("lineage-collapsed")
    tap(page, f"group:job:{job}")
    page.get_by_role("button", name="Expand").click()
    assert graph_state(page)["nodes"] == exploded["nodes"]


def test_an_alias_moved_in_the_page_is_seen_by_the_api(
    writer: Watched, server: Server, root: Path
) -> None:
    page = writer.page
    shelf = ms.Shelf(str(root))
    page.goto(server.url + "/v/digits-cnn:v2")
    page.get_by_label("Point alias").fill("staging")
    with page.expect_navigation():
        page.get_by_role("button", name="Set alias").click()
    assert shelf.get("digits-cnn:staging").version == 2
    assert page.locator("#toast").inner_text().startswith("'staging' now points to")
    assert "staging" in page.locator("#aliases").inner_text()
    writer.shot("version-after-alias")
    with page.expect_navigation():
        page.get_by_title("Remove staging").click()
    with pytest.raises(ms.NotFoundError):
        shelf.get("digits-cnn:staging")
    # Tags and the description too.
    page.get_by_label("Add tags").fill("reviewed")
    with page.expect_navigation():
        page.get_by_role("button", name="Add", exact=True).click()
    assert "reviewed" in shelf.get("digits-cnn:v2").tags


def test_a_write_without_the_token_is_refused(visitor: Watched, server: Server, root: Path) -> None:
    page = visitor.page
    page.goto(server.url + "/v/digits-cnn:v1")
    assert page.locator("form[hx-post='/api/alias']").count() == 0  # no edit form shown
    status = page.evaluate(
        """async () => {
            const body = new URLSearchParams({ref: 'digits-cnn:v1', alias: 'sneaky'});
            const r = await fetch('/api/alias', {method: 'POST', body});
            return [r.status, await r.text()];
        }"""
    )
    assert status[0] == 403 and "token" in status[1]
    assert "sneaky" not in ms.Shelf(str(root)).get("digits-cnn:v1").aliases


def test_hostile_text_is_shown_as_text(writer: Watched, server: Server) -> None:
    page = writer.page
    page.goto(server.url + "/v/notes:v0")
    assert page.locator("#description").inner_text() == ui_shelf.HOSTILE
    page.get_by_role("link", name="preview").click()
    page.wait_for_selector(".preview-body pre")
    assert page.locator(".preview-body pre").inner_text() == ui_shelf.HOSTILE
    assert page.locator("main img").count() == 0  # the <img onerror> is text, not an image
    # writer's fixture fails the test on any dialog (an alert that ran)


def test_the_report_opens_offline(browser: Any, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = subprocess.run(
        [CLI, "--shelf", str(root), "report", "digits-cnn:best", "-o", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    context = browser.new_context(viewport={"width": 1400, "height": 900}, offline=True)
    w = Watched(context)
    w.page.goto(out.as_uri())
    w.page.wait_for_function("() => document.querySelector('#graph').dataset.nodes")
    expected = ms.Shelf(str(root)).lineage("digits-cnn:best", depth=3).to_dict()
    assert graph_state(w.page)["nodes"] == sorted(n["id"] for n in expected["nodes"])
    assert w.page.locator("#metric-chart canvas").count() == 1
    assert w.page.locator("table#versions tbody tr").count() == 6
    w.shot("report")
    context.close()
    assert w.problems == []


def test_a_graph_of_500_nodes_stays_usable(browser: Any, tmp_path: Path) -> None:
    """A prepare run that read 250 raw versions logs the dataset; a train run that used the
    dataset logs 250 model versions: the dataset's lineage has 503 nodes. The page opens
    with the two large groups folded, and each expands on a click."""
    root = tmp_path / "big"
    shelf = ms.Shelf(str(root))
    f = tmp_path / "f.txt"
    for i in range(250):
        f.write_text(str(i))
        shelf.log_artifact(str(f), name="raw", type="dataset")
    with shelf.run(job_type="prepare") as run:
        for i in range(250):
            run.use(f"raw:v{i}")
        f.write_text("data")
        run.log_artifact(str(f), name="big-data", type="dataset")
    with shelf.run(job_type="train") as run:
        run.use("big-data:v0")
        for i in range(250):
            f.write_text(f"model {i}")
            run.log_artifact(str(f), name="m", type="model")
    assert len(shelf.lineage("big-data:v0").nodes) == 503
    s = Server(root)
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        w = Watched(context)
        started = time.monotonic()
        w.page.goto(f"{s.url}/lineage?ref=big-data:v0&depth=all")
        w.page.wait_for_function(
            "() => document.querySelector('#graph').dataset.nodes", timeout=60_000
        )
        print(f"503-node lineage page ready in {time.monotonic() - started:.2f} s")
        folded = graph_state(w.page)["nodes"]
        runs = [f"run:{r.id}" for r in shelf.runs()]
        assert folded == sorted(["big-data:v0", "group:artifact:raw", "group:artifact:m", *runs])
        w.shot("lineage-500-folded")
        for group, count in (("group:artifact:m", 5 - 1 + 250), ("group:artifact:raw", 503)):
            tap(w.page, group)
            started = time.monotonic()
            w.page.get_by_role("button", name="Expand").click()
            assert len(graph_state(w.page)["nodes"]) == count
            print(f"{count} nodes laid out in {time.monotonic() - started:.2f} s")
        tap(w.page, "m:v7")
        assert w.page.locator("#panel h2").inner_text() == "m:v7"
        w.shot("lineage-500-expanded")
        context.close()
        assert w.problems == []
    finally:
        s.stop()
