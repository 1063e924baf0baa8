"""Requests per operation on an S3 shelf, counted on moto's server.

Run: ``python benchmarks/request_counts.py [--artifacts 20] [--versions 10]``. Prints a table
and writes ``benchmarks/results/request_counts.json``. At a real bucket's 20-50 ms a request,
the count is what an operation costs. Each s3fs call is counted as it is made
(``S3FileSystem._call_s3``), by operation; the baseline is what the same operation costs done
by hand with s3fs in the same run: one PUT (logging a small file) and one GET (reading it
back).
"""

from __future__ import annotations

import argparse
import collections
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import save_results


def _moto() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", type=int, default=20)
    parser.add_argument("--versions", type=int, default=10)
    args = parser.parse_args()
    proc, endpoint = _moto()
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint,
    )  # fmt: skip
    try:
        import s3fs

        import modelshelf as ms

        calls: collections.Counter[str] = collections.Counter()
        call_s3 = s3fs.S3FileSystem._call_s3

        async def counted(self: Any, method: Any, *a: Any, **k: Any) -> Any:
            calls[method if isinstance(method, str) else getattr(method, "__name__", "?")] += 1
            return await call_s3(self, method, *a, **k)

        s3fs.S3FileSystem._call_s3 = counted  # type: ignore[method-assign]
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("bench-shelf")
        url = "s3://bench-shelf/shelf"
        tmp = Path(tempfile.mkdtemp())
        shelf = ms.Shelf(url)
        for a in range(args.artifacts):
            for _ in range(args.versions):
                f = tmp / f"f{a}.bin"
                f.write_bytes(uuid.uuid4().bytes)
                shelf.log_artifact(f, name=f"art{a}", type="model")

        def count(fn: Callable[[], object]) -> dict[str, int]:
            calls.clear()
            fn()
            return dict(calls)

        small = tmp / "small.bin"
        small.write_bytes(b"one more")
        rows = {
            "s3fs: put one small file (baseline)": count(
                lambda: fs.pipe_file("bench-shelf/by-hand/small.bin", b"one more")
            ),
            "s3fs: read it back (baseline)": count(
                lambda: fs.cat_file("bench-shelf/by-hand/small.bin")
            ),
            "log_artifact of one small file": count(
                lambda: shelf.log_artifact(small, name="art3", type="model")
            ),
            "get('name') from a fresh Shelf": count(lambda: ms.Shelf(url).get("art5")),
            "get('name:v5') from a fresh Shelf": count(lambda: ms.Shelf(url).get("art5:v5")),
            "get('name') again, same Shelf": count(lambda: shelf.get("art5")),
            "versions(name) from a fresh Shelf": count(lambda: ms.Shelf(url).versions("art5")),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(f"shelf: {args.artifacts} artifacts x {args.versions} versions on moto's S3\n")
    for what, by_op in rows.items():
        detail = ", ".join(f"{n} {op}" for op, n in sorted(by_op.items()))
        print(f"{what:<40}{sum(by_op.values()):>4}  {detail}")
    results = {what: {"requests": sum(ops.values()), **ops} for what, ops in rows.items()}
    print(f"\nwrote {save_results('request_counts', results)}")


if __name__ == "__main__":
    main()
