"""Store benchmark: logging ~1 GiB to a local shelf against shutil.copy, and get() at 10k versions.

Run: ``python benchmarks/store.py [--size-mib 1024] [--versions 10000] [--dir DIR]``.
Prints a table and writes ``benchmarks/results/store.json``. The baseline (shutil.copy of the
same files to the same disk) is measured in the same run.

Targets (issue "The shelf"): first log <= 1.3x the copy; re-logging unchanged content <= 0.3x
the copy; ``get("name:alias")`` on an artifact with 10,000 versions under 10 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import modelshelf as ms
from common import save_results


def make_files(root: Path, total_mib: int) -> int:
    """A few large files (80%) and many small ones (20%, 100 KiB each)."""
    root.mkdir(parents=True)
    large_total = total_mib * 4 // 5
    for i in range(4):
        with open(root / f"shard-{i}.bin", "wb") as f:
            for _ in range(large_total // 4):
                f.write(os.urandom(1024 * 1024))
    small = root / "small"
    small.mkdir()
    n_small = (total_mib - large_total) * 1024 // 100
    for i in range(n_small):
        (small / f"{i:05d}.bin").write_bytes(os.urandom(100 * 1024))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def drop_page_cache_of(path: Path) -> None:
    """Sync so that each timed step starts with no dirty pages of an earlier step."""
    os.sync()


def timed_copy(src: Path, dst: Path, *, durable: bool = False) -> float:
    """The time to copy ``src`` to ``dst``; ``durable``: and to sync it to disk, as a log
    does before it commits (a bare copy ends with the bytes still in the page cache, and how
    fast the cache takes them varies several-fold from run to run)."""
    drop_page_cache_of(src)
    t = time.perf_counter()
    for p in sorted(src.rglob("*")):
        target = dst / p.relative_to(src)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, target)
    if durable:
        os.sync()
    return time.perf_counter() - t


def timed_log(shelf: ms.Shelf, src: Path) -> tuple[float, ms.ArtifactVersion]:
    drop_page_cache_of(src)
    t = time.perf_counter()
    v = shelf.log_artifact(src, name="bench-data", type="dataset")
    return time.perf_counter() - t, v


def get_latency(shelf: ms.Shelf, versions: int, src: Path) -> dict[str, float]:
    f = src / "tiny.txt"
    t = time.perf_counter()
    for i in range(versions):
        f.write_text(str(i))
        v = shelf.log_artifact(f, name="many", type="model")
    fill = time.perf_counter() - t
    shelf.get(f"many:v{versions // 2}").set_alias("best")
    assert v.version == versions - 1
    out = {"fill_s": fill, "log_ms_mean": fill / versions * 1000}
    for ref in ("many:best", "many", f"many:v{versions - 7}"):
        fresh = ms.Shelf(shelf.url)  # a new process's view: nothing cached
        samples = []
        for _ in range(50):
            t = time.perf_counter()
            fresh.get(ref)
            samples.append((time.perf_counter() - t) * 1000)
        out[f"get_ms_median[{ref}]"] = statistics.median(samples)
        out[f"get_ms_p95[{ref}]"] = sorted(samples)[int(len(samples) * 0.95)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch folder (default: tmp)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MODELSHELF_CACHE"] = str(tmp / "cache")
        src = tmp / "src"
        total = make_files(src, args.size_mib)
        time.sleep(1.5)  # files older than the hash cache's racy window, as in real use
        print(f"{total / 2**20:.0f} MiB in {sum(1 for p in src.rglob('*') if p.is_file())} files")

        copy_s = timed_copy(src, tmp / "copy")
        durable_s = timed_copy(src, tmp / "copy-durable", durable=True)
        shutil.rmtree(tmp / "copy-durable")
        shelf = ms.Shelf(tmp / "shelf")
        first_s, v0 = timed_log(shelf, src)
        relog_s, v_again = timed_log(shelf, src)
        assert v_again.version == v0.version
        shutil.rmtree(tmp / "copy")
        get = get_latency(ms.Shelf(tmp / "shelf-many"), args.versions, tmp)

    results = {
        "bytes": total,
        "copy_s": copy_s,
        "first_log_s": first_s,
        "relog_s": relog_s,
        "first_log_vs_copy": first_s / copy_s,
        "relog_vs_copy": relog_s / copy_s,
        "copy_sync_s": durable_s,
        "first_log_vs_copy_sync": first_s / durable_s,
        "relog_vs_copy_sync": relog_s / durable_s,
        "versions": args.versions,
        **get,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    rows = [
        ("shutil.copy (baseline)", f"{copy_s:.2f} s", f"{total / copy_s / 2**20:.0f} MiB/s", ""),
        ("first log_artifact", f"{first_s:.2f} s", f"{first_s / copy_s:.2f}x copy", "<= 1.3x"),
        ("re-log unchanged", f"{relog_s:.2f} s", f"{relog_s / copy_s:.2f}x copy", "<= 0.3x"),
        ("shutil.copy + sync (durable baseline)", f"{durable_s:.2f} s", "", ""),
        ("first log_artifact / durable copy", "", f"{first_s / durable_s:.2f}x", ""),
        ("re-log unchanged / durable copy", "", f"{relog_s / durable_s:.2f}x", ""),
    ]
    for key, value in get.items():
        if key.startswith("get_ms_median"):
            ref = key[len("get_ms_median[") : -1]
            rows.append(
                (f"get({ref!r}) @ {args.versions} versions", f"{value:.2f} ms", "median", "< 10 ms")
            )
    print(f"\n{'step':<44}{'time':>10}  {'relative':>16}  target")
    for step, t, rel, target in rows:
        print(f"{step:<44}{t:>10}  {rel:>16}  {target}")
    print(f"\nwrote {save_results('store', results)}")


if __name__ == "__main__":
    main()
