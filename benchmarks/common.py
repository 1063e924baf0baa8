"""What every benchmark does with its figures: keep them as JSON in benchmarks/results/."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def save_results(name: str, results: dict[str, Any]) -> Path:
    """Write ``results`` to ``results/<name>.json`` and return the path."""
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return out


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """The median wall time of ``fn()`` over ``repeat`` calls, the disk synced before each."""
    samples = []
    for _ in range(repeat):
        os.sync()
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def folder_bytes(path: Path) -> int:
    """The bytes of every file under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def model_arguments(description: str | None) -> argparse.Namespace:
    """The command line of the benchmarks of one model and its checkpoints: ``--mib``,
    ``--checkpoints``, ``--repeat``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mib", type=int, default=100, help="model size")
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    return parser.parse_args()


def sized(name: str, mib: int) -> str:
    """The results name of a run at ``mib`` MiB: ``name`` at the default 100, else suffixed."""
    return name if mib == 100 else f"{name}_{mib}mib"
