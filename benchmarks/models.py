"""Model benchmark: log_model / load_model of a ~256 MB torch model against safetensors itself.

Run: ``python benchmarks/models.py [--mib 256] [--repeat 3]``. Prints a table and writes
``benchmarks/results/models.json``. Baselines are measured in the same run, on the same disk:

- ``safetensors.torch.save_file(state_dict)`` vs ``shelf.log_model(model)``  (target <= 1.2x)
- ``load_file`` + ``load_state_dict`` into a built model vs ``load_model(ref)`` once this
  machine has read the shelf's blobs (target <= 1.2x), and the first load from a new shelf
  (every chunk hashed); the time to build the model first is shown too, and what the loads
  left in the download cache (from a local shelf, chunks are read straight from its blobs)
- peak RSS of a fresh process during ``log_model`` (target <= model size + 100 MiB), and of
  ``save_file`` for comparison (it assembles the whole file in memory)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

import modelshelf as ms
from common import median_time as timed
from common import save_results

HERE = Path(__file__).resolve().parent


class Wide(nn.Module):
    def __init__(self, width: int = 4096, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


RSS = r"""
import os, sys, threading, time
sys.path.insert(0, sys.argv[3])
import torch
from models import Wide
import modelshelf as ms
from safetensors.torch import save_file

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

torch.manual_seed(0)
model = Wide(int(sys.argv[4]))
before, peak, done = rss(), [0], threading.Event()

def sample() -> None:  # the process's resident memory, every 2 ms, during the step only
    while not done.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.002)

sampler = threading.Thread(target=sample)
sampler.start()
if sys.argv[1] == "log_model":
    ms.Shelf(sys.argv[2]).log_model(model, "wide", init_args={"width": int(sys.argv[4])})
else:
    save_file(model.state_dict(), sys.argv[2] + "/model.safetensors")
done.set()
sampler.join()
print(before, max(peak[0], rss()))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256, help="model size")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width = int((args.mib * 2**20 / 4 / 4) ** 0.5)  # 4 square layers of float32
    torch.manual_seed(0)
    model = Wide(width)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())

    with tempfile.TemporaryDirectory(dir=HERE) as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MODELSHELF_CACHE"] = str(tmp / "cache")
        counter = iter(range(1000))

        def save() -> None:
            save_file(model.state_dict(), str(tmp / f"st-{next(counter)}.safetensors"))

        def save_durably() -> None:  # as a version is before it commits: on disk
            path = tmp / f"st-{next(counter)}.safetensors"
            save_file(model.state_dict(), str(path))
            with open(path, "rb") as f:
                os.fsync(f.fileno())

        def log() -> None:
            with torch.no_grad():  # new bytes each time, so nothing is de-duplicated
                model.layers[0].bias[0] += 1
            ms.Shelf(tmp / f"shelf-{next(counter)}").log_model(
                model, "wide", init_args={"width": width}
            )

        save_s = timed(save, args.repeat)
        durable_s = timed(save_durably, args.repeat)
        log_s = timed(log, args.repeat)

        shelf = ms.Shelf(tmp / "shelf-load")
        shelf.log_model(model, "wide", init_args={"width": width}, aliases=["best"])
        shelf.load_model("wide:best")  # warm the cache
        path = str(tmp / "st-0.safetensors")
        built = Wide(width)

        x = torch.ones(1, width)

        # Each step ends with a forward pass, so that lazily mapped weights are really read.
        def baseline_load() -> None:
            built.load_state_dict(load_file(path))
            built(x)

        def baseline_build_and_load() -> None:
            fresh = Wide(width)
            fresh.load_state_dict(load_file(path))
            fresh(x)

        def load() -> None:
            shelf.load_model("wide:best")(x)

        def first_load() -> float:
            """A load on a machine that never read this shelf's blobs (a new shelf's blobs are
            new paths): every chunk hashed."""
            fresh = ms.Shelf(tmp / f"shelf-first-{next(counter)}")
            fresh.log_model(model, "wide", init_args={"width": width}, aliases=["best"])
            os.sync()
            t = time.perf_counter()
            fresh.load_model("wide:best")(x)
            return time.perf_counter() - t

        with torch.no_grad():
            base_s = timed(baseline_load, args.repeat)
            base_build_s = timed(baseline_build_and_load, args.repeat)
            load_s = timed(load, args.repeat)
            first_s = statistics.median(first_load() for _ in range(args.repeat))
        cached = sum(p.stat().st_size for p in Path(os.environ["MODELSHELF_CACHE"]).rglob("*"))

        rss = {}
        for what in ("log_model", "save_file"):
            target = tmp / f"rss-{what}"
            target.mkdir()
            out = subprocess.run(
                [sys.executable, "-c", RSS, what, str(target), str(HERE), str(width)],
                capture_output=True, text=True, check=True, env=os.environ.copy(),
            ).stdout.split()  # fmt: skip
            rss[what] = (int(out[1]) - int(out[0])) / 2**20  # MiB above the loaded model

    results = {
        "model_bytes": size,
        "save_file_s": save_s,
        "log_model_s": log_s,
        "log_vs_save": log_s / save_s,
        "save_file_fsync_s": durable_s,
        "log_vs_save_fsync": log_s / durable_s,
        "load_file_load_state_dict_s": base_s,
        "build_load_file_load_state_dict_s": base_build_s,
        "load_model_warm_s": load_s,
        "load_vs_baseline": load_s / base_s,
        "load_model_first_s": first_s,
        "first_load_vs_baseline": first_s / base_s,
        "cache_bytes_after_loads": cached,
        "peak_rss_above_model_mib": rss,
    }
    mib = size / 2**20
    rows = [
        ("safetensors save_file (baseline)", f"{save_s:.2f} s", "", ""),
        ("log_model", f"{log_s:.2f} s", f"{log_s / save_s:.2f}x", "<= 1.2x"),
        ("save_file + fsync (durable baseline)", f"{durable_s:.2f} s", "", ""),
        ("log_model / durable save_file", "", f"{log_s / durable_s:.2f}x", ""),
        ("load_file + load_state_dict + forward (baseline)", f"{base_s:.3f} s", "", ""),
        ("  the same, building the model first", f"{base_build_s:.3f} s", "", ""),
        (
            "load_model + forward, warm cache",
            f"{load_s:.3f} s",
            f"{load_s / base_s:.2f}x",
            "<= 1.2x",
        ),
        (
            "load_model + forward, first (chunks hashed)",
            f"{first_s:.3f} s",
            f"{first_s / base_s:.2f}x",
            "",
        ),
        ("download cache after every load", f"{cached / 2**20:.1f} MiB", "", ""),
        ("peak RSS above the model: log_model", f"{rss['log_model']:.0f} MiB", "", "<= 100 MiB"),
        ("peak RSS above the model: save_file", f"{rss['save_file']:.0f} MiB", "", ""),
    ]
    print(f"model: {mib:.0f} MiB float32 ({width}x{width} x 4 layers), median of {args.repeat}\n")
    for step, t, rel, target in rows:
        print(f"{step:<50}{t:>10}  {rel:>7}  {target}")
    print(f"\nwrote {save_results('models', results)}")


if __name__ == "__main__":
    main()
