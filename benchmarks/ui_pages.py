"""Server time of each web UI page on a shelf of 200 artifacts x 100 versions on local disk.

    python benchmarks/ui_pages.py [--artifacts 200] [--versions 100] [--repeat 5]

The shelf is built once into benchmarks/tmp-ui-shelf-AxV/ and kept for later runs. Each page
is asked for through Starlette's TestClient (the app in this process: what is timed is the
server's work, not a network), once cold (a fresh server: its record cache empty) and then
warm (the median of --repeat). The baseline, measured in the same run, is the public API calls
that fetch the same data without rendering anything. The goal: every page under 300 ms warm.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

import modelshelf as ms
from common import save_results
from modelshelf._features.diff import metrics_of
from modelshelf.ui.app import create_app

HERE = Path(__file__).resolve().parent
GOAL_S = 0.3


def build(root: Path, artifacts: int, versions: int) -> None:
    """``artifacts`` names (a quarter datasets, the rest models), each with ``versions``
    versions logged by one run, with metrics; one dataset used by every training run."""
    shelf = ms.Shelf(str(root))
    scratch = Path(tempfile.mkdtemp(dir=HERE, prefix="tmp-ui-files-"))

    def one(i: int) -> None:
        kind = "dataset" if i % 4 == 0 else "model"
        name = f"{kind}-{i:03d}"
        f = scratch / f"{name}.bin"
        with shelf.run(job_type="train" if kind == "model" else "prepare") as run:
            if kind == "model":
                run.use("dataset-000:latest")
            for v in range(versions):
                f.write_bytes(f"{name} {v}".encode() * 64)
                loss = 1.0 / (v + 1) + i / 1000
                run.log({"val_loss": loss}, step=v)
                run.log_artifact(
                    str(f), name=name, type=kind,
                    metadata={"metrics": {"val_loss": loss, "val_acc": 1 - loss / 2}},
                )  # fmt: skip
        shelf.get(f"{name}:v{versions // 2}").set_alias("production")

    one(0)
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        for n, _ in enumerate(pool.map(one, range(1, artifacts)), start=2):
            if n % 20 == 0:
                print(f"  built {n}/{artifacts} artifacts ({time.perf_counter() - started:.0f} s)")


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """(the first call's time, the median of the next ``repeat``)."""
    t = time.perf_counter()
    fn()
    cold = time.perf_counter() - t
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return cold, statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=int, default=200)
    parser.add_argument("--versions", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = HERE / f"tmp-ui-shelf-{args.artifacts}x{args.versions}"
    if not (root / "done").exists():
        print(f"building {root} (once)")
        build(root, args.artifacts, args.versions)
        (root / "done").write_text("")
    name, last = "model-001", args.versions - 1
    pages = {
        "home": "/",
        "artifact (100 versions)": f"/a/{name}",
        "version": f"/v/{name}:production",
        "compare 2 versions": f"/compare?ref={name}:v0&ref={name}:v{last}",
        "lineage (api)": f"/api/lineage?ref={name}:v{last}&depth=2",
        "runs": "/runs",
        "run": None,
        "dashboard (150 models)": "/dashboard?type=model&metric=val_loss&mode=min&top=20",
    }
    shelf = ms.Shelf(str(root))
    run_id = shelf.get(f"{name}:v0").run_id
    pages["run"] = f"/runs/{run_id}"

    def api(page: str) -> Callable[[], Any]:
        """What the page reads, through the API, rendering nothing (the baseline)."""
        s = ms.Shelf(str(root))
        repo = s.repository
        return {
            "home": lambda: [repo.summary(n) for n in repo.folders()],
            "artifact (100 versions)": lambda: [metrics_of(v) for v in s.versions(name)],
            "version": lambda: s.get(f"{name}:production").files,
            "compare 2 versions": lambda: s.diff(f"{name}:v0", f"{name}:v{last}"),
            "lineage (api)": lambda: s.lineage(f"{name}:v{last}", depth=2).to_dict(),
            "runs": lambda: s.runs(),
            "run": lambda: s.get_run(run_id).history(),
            "dashboard (150 models)": lambda: [
                metrics_of(v) for n in s.artifacts(type="model") for v in s.versions(n)
            ],
        }[page]

    results: dict[str, Any] = {
        "artifacts": args.artifacts, "versions": args.versions, "goal_s": GOAL_S, "pages": {},
    }  # fmt: skip
    print(f"{'page':<26}{'cold':>9}{'warm':>9}{'API only':>10}  goal {GOAL_S * 1000:.0f} ms")
    for page, url in pages.items():
        client = TestClient(create_app(ms.Shelf(str(root))), base_url="http://127.0.0.1")

        def get(url: str = str(url), client: TestClient = client) -> None:
            response = client.get(url)
            assert response.status_code == 200, response.text[:500]

        cold, warm = timed(get, args.repeat)
        _, baseline = timed(api(page), args.repeat)
        results["pages"][page] = {
            "url": url, "cold_s": cold, "warm_s": warm, "api_s": baseline, "met": warm < GOAL_S,
        }  # fmt: skip
        mark = "" if warm < GOAL_S else "  over"
        print(
            f"{page:<26}{cold * 1000:>7.0f}ms{warm * 1000:>7.0f}ms{baseline * 1000:>8.0f}ms{mark}"
        )
    out = save_results(f"ui_pages_{args.artifacts}x{args.versions}", results)
    print(f"saved {out}")


if __name__ == "__main__":
    sys.exit(main())
