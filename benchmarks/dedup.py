"""De-duplication benchmark: what fine-tune checkpoints cost on a shelf, and what a re-log
of an unchanged model costs, against safetensors itself in the same run.

Run: ``python benchmarks/dedup.py [--mib 100] [--checkpoints 5] [--repeat 3]``. Prints a
table and writes ``benchmarks/results/dedup.json``.

The model is the fine-tune of the figures we are measured on: frozen 1024-wide square layers
(as many as make ``--mib``) under a small trained head.

- **Head-only checkpoints**: ``--checkpoints`` versions where only the head changes. Their
  storage on the shelf is compared with one model's safetensors file (the physical limit is
  one model plus each later checkpoint's changed tensors).
- **LoRA-style checkpoints**: small rank-8 adapters beside every frozen layer; only the
  adapters change. The same comparison.
- **Re-log of an unchanged model** against ``safetensors.torch.save_file`` of it (goal:
  <= 0.3x), and a first log against the same (goal: <= 1.0x).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import modelshelf as ms
from common import median_time as timed
from common import model_arguments, save_results, sized

HERE = Path(__file__).resolve().parent
WIDTH = 1024


class FineTune(nn.Module):
    def __init__(self, depth: int, rank: int = 0) -> None:
        super().__init__()
        self.init_args = {"depth": depth, "rank": rank}
        self.body = nn.ModuleList(nn.Linear(WIDTH, WIDTH) for _ in range(depth))
        self.body.requires_grad_(False)
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Linear(WIDTH, rank, bias=False), nn.Linear(rank, WIDTH, bias=False))
            for _ in range(depth if rank else 0)
        )
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.body):
            x = torch.relu(layer(x) + (self.adapters[i](x) if self.adapters else 0))
        return self.head(x)


def nbytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def blob_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "blobs").rglob("*") if p.is_file())


def checkpoints(tmp: Path, model: nn.Module, trained: nn.Module, n: int) -> dict[str, float]:
    """Log ``n`` versions, changing only ``trained`` between them; storage against limits."""
    root = tmp / f"shelf-{id(model)}"
    shelf = ms.Shelf(root)
    for _ in range(n):
        shelf.log_model(model, "ft", init_args=model.init_args)
        with torch.no_grad():
            for p in trained.parameters():
                p.add_(0.01)
    one = tmp / "one.safetensors"
    save_file(model.state_dict(), str(one))
    model_bytes, stored = one.stat().st_size, blob_bytes(root)
    limit = model_bytes + (n - 1) * nbytes(trained)
    return {
        "model_bytes": model_bytes,
        "stored_bytes": stored,
        "physical_limit_bytes": limit,
        "stored_vs_one_model": stored / model_bytes,
        "stored_vs_limit": stored / limit,
    }


def main() -> None:
    args = model_arguments(__doc__)
    depth = max(1, round(args.mib * 2**20 / (WIDTH * WIDTH * 4)))
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory(dir=HERE) as tmp_name:
        tmp = Path(tmp_name)
        os.environ["MODELSHELF_CACHE"] = str(tmp / "cache")
        head_only = FineTune(depth)
        head = checkpoints(tmp, head_only, head_only.head, args.checkpoints)
        lora_model = FineTune(depth, rank=8)
        lora = checkpoints(tmp, lora_model, lora_model.adapters, args.checkpoints)

        model = FineTune(depth)
        counter = iter(range(10_000))

        def save() -> None:
            save_file(model.state_dict(), str(tmp / f"st-{next(counter)}.safetensors"))

        def first_log() -> None:
            ms.Shelf(tmp / f"fresh-{next(counter)}").log_model(
                model, "m", init_args=model.init_args
            )

        relog_shelf = ms.Shelf(tmp / "relog")
        relog_shelf.log_model(model, "m", init_args=model.init_args)

        def relog() -> None:
            relog_shelf.log_model(model, "m", init_args=model.init_args)

        save_s = timed(save, args.repeat)
        first_s = timed(first_log, args.repeat)
        relog_s = timed(relog, args.repeat)
        assert len(relog_shelf.versions("m")) == 1

    results = {
        "model_mib": nbytes(model) / 2**20,
        "checkpoints": args.checkpoints,
        "head_only": head,
        "lora": lora,
        "save_file_s": save_s,
        "first_log_s": first_s,
        "first_log_vs_save_file": first_s / save_s,
        "relog_unchanged_s": relog_s,
        "relog_vs_save_file": relog_s / save_s,
    }
    n = args.checkpoints
    rows = [
        (f"{n} head-only checkpoints / one model", f"{head['stored_vs_one_model']:.3f}x", ""),
        ("  / the bytes that changed (limit)", f"{head['stored_vs_limit']:.3f}x", "<= 1.05x"),
        (f"{n} LoRA-style checkpoints / one model", f"{lora['stored_vs_one_model']:.3f}x", ""),
        ("  / the bytes that changed (limit)", f"{lora['stored_vs_limit']:.3f}x", "<= 1.05x"),
        ("safetensors save_file (baseline)", f"{save_s:.3f} s", ""),
        ("first log_model / save_file", f"{first_s:.3f} s  {first_s / save_s:.2f}x", "<= 1.0x"),
        ("re-log unchanged / save_file", f"{relog_s:.3f} s  {relog_s / save_s:.2f}x", "<= 0.3x"),
    ]
    print(f"model: {nbytes(model) / 2**20:.0f} MiB ({depth} frozen {WIDTH}x{WIDTH} + head)\n")
    for step, value, goal in rows:
        print(f"{step:<42}{value:>18}  {goal}")
    print(f"\nwrote {save_results(sized('dedup', args.mib), results)}")


if __name__ == "__main__":
    main()
