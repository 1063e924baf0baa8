"""Requests and time per operation on an S3 shelf: moto's server, counting, with a latency.

Run: ``python benchmarks/request_counts.py [--artifacts 20] [--versions 10] [--latency 30]
[--mib 64]``. Prints a table and writes ``benchmarks/results/request_counts.json``.

The server (``counting_s3.py``) counts every request it is sent, by operation, and the bytes
in request bodies; it makes each request wait ``--latency`` ms first (requests sent side by
side wait side by side), as a bucket 20-50 ms away would. The shelf of ``--artifacts`` x
``--versions`` small versions is built without the latency. Baselines, in the same run: what
the same work costs done by hand with s3fs (one PUT to store a small file, one GET to read it;
``put_file`` / ``get_file`` of a large file).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import save_results
from counting_s3 import CountingS3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=int, default=20)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--latency", type=float, default=30.0, help="ms added per request")
    parser.add_argument("--mib", type=int, default=64, help="size of the large file")
    args = parser.parse_args()
    server = CountingS3()
    tmp = Path(tempfile.mkdtemp())
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=server.endpoint,
        MODELSHELF_CACHE=str(tmp / "cache"),
    )  # fmt: skip
    try:
        import s3fs

        import modelshelf as ms

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench-shelf")
        url = "s3://bench-shelf/shelf"
        shelf = ms.Shelf(url)
        for a in range(args.artifacts):
            for v in range(args.versions):
                f = tmp / f"f{a}.bin"
                f.write_bytes(uuid.uuid4().bytes)
                shelf.log_artifact(
                    f, name=f"art{a}", type="model", aliases=["best"] if v == 3 else []
                )
        big = tmp / "big.bin"
        big.write_bytes(os.urandom(args.mib << 20))
        head_only = _checkpoints(tmp)
        server.latency(args.latency)

        def measure(fn: Callable[[], object]) -> dict[str, Any]:
            server.take()
            t = time.perf_counter()
            fn()
            seconds = time.perf_counter() - t
            ops = server.take()
            sent = ops.pop("bytes sent", 0)
            return {"requests": sum(ops.values()), "seconds": round(seconds, 4),
                    "bytes sent": sent, **ops}  # fmt: skip

        machines = iter(range(1000))

        def new_machine() -> None:
            """A download cache that has seen nothing of the shelf (the records are kept there
            by the MD5 the bucket lists for them)."""
            os.environ["MODELSHELF_CACHE"] = str(tmp / f"machine{next(machines)}")

        small = tmp / "small.bin"
        small.write_bytes(b"one more")
        resolves = {}
        for ref in ("art4", "art4:v5", "art4:best"):
            resolves[f"get('{ref}'), fresh Shelf, new machine"] = measure(
                lambda ref=ref: (new_machine(), ms.Shelf(url).get(ref))
            )
            resolves[f"get('{ref}'), fresh Shelf, machine read it"] = measure(
                lambda ref=ref: ms.Shelf(url).get(ref)
            )
        rows = {
            "s3fs: put one small file (baseline)": measure(
                lambda: fs.pipe_file("bench-shelf/by-hand/small.bin", b"one more")
            ),
            "s3fs: read it back (baseline)": measure(
                lambda: fs.cat_file("bench-shelf/by-hand/small.bin")
            ),
            "log_artifact of one small file": measure(
                lambda: shelf.log_artifact(small, name="art2", type="model")
            ),
            **resolves,
            "get('name') again, same Shelf": measure(lambda: shelf.get("art4")),
            "versions(name), fresh Shelf, new machine": measure(
                lambda: (new_machine(), ms.Shelf(url).versions("art4"))
            ),
            "versions(name), fresh Shelf, machine read it": measure(
                lambda: ms.Shelf(url).versions("art4")
            ),
            "artifacts() from a fresh Shelf": measure(lambda: ms.Shelf(url).artifacts()),
            "modelshelf ls, new machine": measure(lambda: (new_machine(), _ls(url))),
            "modelshelf ls, machine read it": measure(lambda: _ls(url)),
            f"s3fs: put_file of {args.mib} MiB (baseline)": measure(
                lambda: fs.put_file(str(big), "bench-shelf/by-hand/big.bin")
            ),
            f"log_artifact of {args.mib} MiB": measure(
                lambda: shelf.log_artifact(big, name="big", type="model")
            ),
            f"s3fs: get_file of {args.mib} MiB (baseline)": measure(
                lambda: fs.get_file("bench-shelf/by-hand/big.bin", str(tmp / "back.bin"))
            ),
            f"download of {args.mib} MiB, fresh cache": measure(
                lambda: (new_machine(), ms.Shelf(url).get("big").download(tmp / "down"))
            ),
        }
        first, second, head_bytes = head_only
        rows["safetensors checkpoint, first"] = measure(
            lambda: shelf.log_artifact(first, name="ckpt", type="model")
        )
        rows["safetensors checkpoint, only the head changed"] = {
            **measure(lambda: shelf.log_artifact(second, name="ckpt", type="model")),
            "head bytes": head_bytes,
        }
    finally:
        server.stop()
    print(
        f"shelf: {args.artifacts} artifacts x {args.versions} versions on moto's S3, "
        f"{args.latency:g} ms per request\n"
    )
    print(f"{'':<52}{'requests':>9}{'seconds':>9}{'MiB sent':>10}  by operation")
    for what, row in rows.items():
        detail = ", ".join(
            f"{n} {op}" for op, n in sorted(row.items())
            if op not in ("requests", "seconds", "bytes sent", "head bytes")
        )  # fmt: skip
        print(
            f"{what:<52}{row['requests']:>9}{row['seconds']:>9.3f}"
            f"{row['bytes sent'] / 2**20:>10.2f}  {detail}"
        )
    results = {"latency_ms": args.latency, **rows}
    print(f"\nwrote {save_results('request_counts', results)}")


def _ls(url: str) -> None:
    """What ``modelshelf ls`` does, in this process (so that only the requests are timed)."""
    from typer.testing import CliRunner

    from modelshelf.cli.commands import app

    result = CliRunner().invoke(app, ["--shelf", url, "ls", "--json"])
    if result.exit_code != 0:
        raise RuntimeError(result.output)


def _checkpoints(tmp: Path) -> tuple[Path, Path, int]:
    """Two safetensors files of 16 layers of 1 MiB and a head: the second changes the head."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    layers = {f"layer{i}.weight": rng.standard_normal((512, 512), np.float32) for i in range(16)}
    head = {"head.weight": rng.standard_normal((64, 512), np.float32)}
    first, second = tmp / "ckpt1.safetensors", tmp / "ckpt2.safetensors"
    save_file({**layers, **head}, str(first))
    save_file({**layers, "head.weight": head["head.weight"] + 1}, str(second))
    return first, second, int(head["head.weight"].nbytes)


if __name__ == "__main__":
    sys.exit(main())
