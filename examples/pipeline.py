"""A pipeline with lineage: dataset -> train (two configs) -> evaluate -> predictions.
Then compare the candidates, promote the winner to `production`, and trace its lineage.

    python examples/pipeline.py                    # shelf: $MODELSHELF_ROOT or ~/.modelshelf

Each step is a run: what it used and what it logged are edges of the lineage graph, and its
config, metrics, host, git commit and package versions are recorded with it.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from torch import nn

import digits_data
import modelshelf as ms
from digits_nets import DigitsMLP

MODEL = "digits-classifier"


def prepare(shelf: ms.Shelf) -> ms.ArtifactVersion:
    """Log the dataset (the same bytes each time, so re-running adds no version)."""
    config = {"source": "sklearn load_digits"}
    with shelf.run(job_type="prepare", config=config) as run, tempfile.TemporaryDirectory() as tmp:
        return run.log_artifact(
            str(digits_data.save(tmp)), name="digits", type="dataset",
            metadata={"rows": {"train": 1200, "val": 300, "test": 297}},
        )  # fmt: skip


def train(shelf: ms.Shelf, hidden: int, lr: float, epochs: int = 25) -> ms.ArtifactVersion:
    config = {"hidden": hidden, "lr": lr, "epochs": epochs, "batch_size": 64}
    with shelf.run(job_type="train", config=config) as run:
        data = digits_data.read(run.use("digits:latest").download())  # an input edge
        x, y = (torch.from_numpy(a) for a in data["train"])
        xv, yv = (torch.from_numpy(a) for a in data["val"])
        torch.manual_seed(0)
        model, loss_fn = DigitsMLP(hidden), nn.CrossEntropyLoss()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for epoch in range(epochs):
            for i in torch.randperm(len(x)).split(64):
                opt.zero_grad()
                loss_fn(model(x[i]), y[i]).backward()
                opt.step()
            with torch.no_grad():
                logits = model(xv)
            val = {"val_loss": loss_fn(logits, yv).item(),
                   "val_acc": (logits.argmax(1) == yv).float().mean().item()}  # fmt: skip
            run.log(val, step=epoch)  # metric history, kept with the run
        return run.log_model(model, MODEL, init_args={"hidden": hidden}, metadata={"metrics": val})


def evaluate(shelf: ms.Shelf, ref: str) -> ms.ArtifactVersion:
    """Score a candidate on the test split; log its predictions as their own artifact."""
    with shelf.run(job_type="evaluate") as run:
        candidate = run.use(ref)
        x, y = digits_data.read(run.use("digits:latest").download())["test"]
        model = shelf.load_model(candidate.ref)
        with torch.no_grad():
            labels = model(torch.from_numpy(x)).argmax(1).numpy()
        test_acc = float((labels == y).mean())
        run.log({"test_acc": test_acc})
        metrics = {**candidate.metadata["metrics"], "test_acc": test_acc}
        candidate.update_metadata({"metrics": metrics})  # labels may change; bytes may not
        with tempfile.TemporaryDirectory() as tmp:
            np.save(f"{tmp}/labels.npy", labels)
            return run.log_artifact(
                tmp, name="digits-predictions", type="predictions",
                metadata={"model": candidate.ref, "test_acc": test_acc},
            )  # fmt: skip


def main() -> None:
    shelf = ms.shelf()
    print(f"shelf: {shelf.url}\n")
    dataset = prepare(shelf)
    candidates = [train(shelf, hidden=16, lr=0.01), train(shelf, hidden=64, lr=0.003)]
    for candidate in candidates:
        evaluate(shelf, candidate.ref)

    print("train runs (config -> last metrics, epochs logged):")
    for run in shelf.runs(job_type="train")[-2:]:
        last = {k: round(v, 4) for k, v in run.summary.items()}
        print(f"  {run.id} {run.status}: {run.config} -> {last}, {len(run.history())} epochs")

    print(f"\n{'version':<24}{'aliases':<20}{'val_acc':>8}{'test_acc':>9}  config")
    for row in shelf.compare([c.ref for c in candidates]):
        m = row["metrics"]
        print(f"{row['ref']:<24}{','.join(row['aliases']):<20}{m['val_acc']:>8.3f}"
              f"{m['test_acc']:>9.3f}  {row['config']}")  # fmt: skip

    winner = shelf.best(MODEL, "test_acc", mode="max")  # over every version of the artifact
    winner.set_alias("production")  # atomic; the move is kept in the alias history
    moves = [(e.version, f"{e.at:%H:%M:%S}") for e in shelf.alias_history(MODEL, "production")]
    print(f"\npromoted {winner.ref} to production (history: {moves})")
    print(f"dataset {dataset.ref} was used by {len(dataset.used_by())} runs\n")
    print(shelf.lineage(f"{MODEL}:production").to_mermaid())


if __name__ == "__main__":
    main()
