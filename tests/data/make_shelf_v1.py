"""Write tests/data/shelf-v1: a small shelf in on-shelf format 1, for the compatibility test.

It was run once, with the code as it stood before the layered core (commit 1534c83), and its
output is committed. Do not regenerate it with newer code: the point of the test is that new
code reads, verifies, resolves and extends a shelf that old code wrote.

    python tests/data/make_shelf_v1.py
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

import modelshelf as ms

HERE = Path(__file__).parent
OUT = HERE / "shelf-v1"
REFERENCE = Path("/tmp/modelshelf-compat-reference.txt")
REFERENCE_TEXT = b"bytes that stay outside the shelf\n"
REFERENCE_MTIME = 1_700_000_000


class TinyNet(torch.nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def main() -> None:
    if OUT.exists():
        sys.exit(f"{OUT} exists; it is committed data, written once by the old code.")
    REFERENCE.write_bytes(REFERENCE_TEXT)
    os.utime(REFERENCE, (REFERENCE_MTIME, REFERENCE_MTIME))
    work = HERE / "_work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "data").mkdir(parents=True)
    shelf = ms.Shelf(OUT)
    with shelf.run("prepare", job_type="prepare", config={"seed": 0}) as run:
        (work / "data" / "train.csv").write_text("x,y\n1,2\n3,4\n")
        (work / "data" / "README.txt").write_text("two rows\n")
        ds = run.log_artifact(work / "data", name="digits", type="dataset", aliases=["train"])
        ds.add_tags("small")
        ds.update_metadata({"rows": 2})
        art = ms.Artifact("refs", "dataset", description="a reference")
        art.add_reference(REFERENCE.as_uri())
        run.log_artifact(art)
        run.log({"rows": 2})
    torch.manual_seed(0)
    with shelf.run("train", config={"lr": 0.1}) as run:
        run.use("digits:train")
        for epoch in range(3):
            net = TinyNet(width=4)
            with torch.no_grad():
                net.layer.bias.fill_(epoch)
            run.log({"loss": 1.0 / (epoch + 1)}, step=epoch)
            run.log_model(
                net, "proj/tiny", init_args={"width": 4},
                metadata={"metrics": {"loss": 1.0 / (epoch + 1)}},
            )  # fmt: skip
    shelf.get("proj/tiny:v1").set_alias("best")
    shelf.get("proj/tiny:v2").set_alias("best")  # best moved: alias history has two events
    shelf.get("proj/tiny:v2").set_alias("production")
    shelf.get("proj/tiny:v0").set_description("the first one")
    shelf.delete("proj/tiny:v0")
    (work / "notes.txt").write_text("hello\n")
    shelf.log_artifact(work / "notes.txt", name="notes", type="text")
    shutil.rmtree(work)
    shutil.rmtree(OUT / "tmp", ignore_errors=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
