"""The core in one minute: log a folder, log it changed, alias, list, download, verify.

Runs on the default shelf ($MODELSHELF_ROOT or ~/.modelshelf). Each run adds versions.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from pathlib import Path

import modelshelf as ms


def fake_training_output(folder: Path, seed: int, lr: float) -> None:
    """What a training script leaves behind: a config, labels, and some weights."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"lr": lr, "seed": seed, "layers": [64, 10]}))
    (folder / "labels.txt").write_text("\n".join(str(d) for d in range(10)))
    (folder / "weights.bin").write_bytes(bytes(rng.getrandbits(8) for _ in range(256 * 1024)))


def main() -> None:
    shelf = ms.shelf()
    print(f"shelf: {shelf.url}\n")
    seed = time.time_ns()  # a new "training run" each time the demo runs
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        fake_training_output(out, seed, lr=0.1)
        first = shelf.log_artifact(out, name="demo-model", type="model", metadata={"lr": 0.1})
        print(f"logged   {first.ref}  ({first.size / 1024:.0f} KiB, {len(first.files)} files)")

        # Change one file only: the new version stores that file's bytes alone.
        (out / "config.json").write_text(json.dumps({"lr": 0.01, "seed": seed}))
        second = shelf.log_artifact(out, name="demo-model", type="model", metadata={"lr": 0.01})
        print(f"logged   {second.ref}  (weights shared with {first.ref})")

        second.set_alias("best")
        second.add_tags("demo")
        print(f"aliased  {shelf.get('demo-model:best').ref} as 'best'\n")

    print(f"{'version':<16}{'aliases':<22}{'size':>10}  {'lr':>6}  created")
    for v in shelf.versions("demo-model")[-6:]:
        created = v.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        aliases = ",".join(v.aliases)
        lr = v.metadata.get("lr", "")
        print(f"{v.ref:<16}{aliases:<22}{v.size:>10}  {lr!s:>6}  {created}")

    best = shelf.get("demo-model:best")
    folder = best.download()
    best.verify()
    print(f"\ndownloaded {best.ref} to {folder}")
    for name in sorted(os.listdir(folder)):
        print(f"  {name}")
    print(f"verified every byte of {best.ref} against its sha256")


if __name__ == "__main__":
    main()
