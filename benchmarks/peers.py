"""modelshelf against MLflow's model registry, in the same run, on the same disk.

Run by ``make bench``, in ``.venv-bench`` (MLflow is never part of the test install), or by
hand there: ``.venv-bench/bin/python benchmarks/peers.py [--mib 100] [--checkpoints 5]``.
Prints a table and writes ``benchmarks/results/peers.json``.

MLflow: a sqlite tracking store and local artifacts; a version is
``mlflow.pytorch.log_model(..., registered_model_name=..., serialization_format="pickle")``
(MLflow 3's default, ``pt2``, traces the model first and took 30 times longer here) and
``best`` a registered-model
alias, loaded with ``mlflow.pytorch.load_model("models:/name@best")``. modelshelf: a local
shelf, ``log_model(..., aliases=["best"])`` and ``load_model("name:best")``, the model rebuilt
from its recorded recipe. Every figure is also given as a ratio to safetensors itself in the
same run: ``save_file`` of the state dict, and ``load_file`` into an existing model.

The model is the fine-tune of ``benchmarks/dedup.py``: frozen 1024-wide layers under a small
head, and each checkpoint changes only the head.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import modelshelf as ms
from common import folder_bytes, model_arguments, save_results, sized
from common import median_time as timed
from dedup import WIDTH, FineTune

HERE = Path(__file__).resolve().parent


def nudge(model: FineTune) -> None:
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.01)


def main() -> None:
    args = model_arguments(__doc__)
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    depth = max(1, round(args.mib * 2**20 / (WIDTH * WIDTH * 4)))
    torch.manual_seed(0)
    model = FineTune(depth)
    x = torch.ones(1, WIDTH)
    out: dict[str, Any] = {"mlflow_version": mlflow.__version__, "model_mib": args.mib}

    with tempfile.TemporaryDirectory(dir=HERE) as tmp_name, torch.no_grad():
        tmp = Path(tmp_name)
        os.environ["MODELSHELF_CACHE"] = str(tmp / "cache")
        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        artifacts = tmp / "mlartifacts"
        mlflow.create_experiment("bench", artifact_location=artifacts.as_uri())
        mlflow.set_experiment("bench")
        client = MlflowClient()
        shelf = ms.Shelf(tmp / "shelf")
        counter = iter(range(10_000))

        # -- the baselines: safetensors itself --------------------------------------------
        def save() -> None:
            save_file(model.state_dict(), str(tmp / f"st-{next(counter)}.safetensors"))

        def save_durably() -> None:  # what a version on a shelf is: on disk, not in the cache
            path = tmp / f"st-{next(counter)}.safetensors"
            save_file(model.state_dict(), str(path))
            with open(path, "rb") as f:
                os.fsync(f.fileno())

        out["save_file_s"] = timed(save, args.repeat)
        out["save_file_fsync_s"] = timed(save_durably, args.repeat)
        weights = str(tmp / "st-0.safetensors")
        skeleton = FineTune(depth)

        def load_into_skeleton() -> None:
            skeleton.load_state_dict(load_file(weights))
            skeleton(x)

        out["load_file_s"] = timed(load_into_skeleton, args.repeat)

        # -- checkpoints: log, storage -----------------------------------------------------
        def mlflow_log() -> None:
            with mlflow.start_run():
                info = mlflow.pytorch.log_model(
                    model, name="model", registered_model_name="ft", serialization_format="pickle"
                )
            client.set_registered_model_alias("ft", "best", info.registered_model_version)

        def shelf_log() -> None:
            shelf.log_model(model, "ft", init_args={"depth": depth}, aliases=["best"])

        for who, log in (("mlflow", mlflow_log), ("modelshelf", shelf_log)):
            times = []
            for _ in range(args.checkpoints):
                nudge(model)
                os.sync()
                t = time.perf_counter()
                log()
                times.append(time.perf_counter() - t)
            out[f"{who}_first_log_s"] = times[0]
            out[f"{who}_checkpoint_log_s"] = statistics.median(times[1:] or times)
        one_model = Path(weights).stat().st_size
        out["one_model_bytes"] = one_model
        out["mlflow_bytes"] = folder_bytes(artifacts)
        out["modelshelf_bytes"] = folder_bytes(tmp / "shelf" / "blobs")

        # -- re-log of an unchanged model --------------------------------------------------
        out["mlflow_relog_s"] = timed(mlflow_log, args.repeat)
        out["modelshelf_relog_s"] = timed(shelf_log, args.repeat)

        # -- load by alias, model rebuilt --------------------------------------------------
        mlflow.pytorch.load_model("models:/ft@best")  # warm: both read from local disk
        shelf.load_model("ft:best")
        out["mlflow_load_s"] = timed(lambda: mlflow.pytorch.load_model("models:/ft@best")(x), 3)
        out["modelshelf_load_s"] = timed(lambda: shelf.load_model("ft:best")(x), 3)
        loaded = shelf.load_model("ft:best")
        assert all(
            torch.equal(a, b)
            for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
        )

    save_s, load_s = out["save_file_s"], out["load_file_s"]
    n = args.checkpoints
    rows = [
        ("first log / save_file", "first_log_s", save_s),
        ("checkpoint log (head changed) / save_file", "checkpoint_log_s", save_s),
        ("re-log unchanged / save_file", "relog_s", save_s),
        ("load by alias, model rebuilt / load_file", "load_s", load_s),
    ]
    shape = f"{depth} frozen {WIDTH}x{WIDTH} + head"
    print(f"model: {args.mib} MiB ({shape}), MLflow {mlflow.__version__}")
    durable = out["save_file_fsync_s"]
    print(
        f"baselines: save_file {save_s:.3f} s ({durable:.3f} s with an fsync), "
        f"load_file into a model {load_s:.3f} s\n"
    )
    print(f"{'':<44}{'MLflow':>16}{'modelshelf':>18}")
    for label, key, base in rows:
        a, b = out[f"mlflow_{key}"], out[f"modelshelf_{key}"]
        out[f"mlflow_{key.removesuffix('_s')}_ratio"] = a / base
        out[f"modelshelf_{key.removesuffix('_s')}_ratio"] = b / base
        print(f"{label:<44}{a / base:>9.2f}x {a:5.2f}s{b / base:>11.2f}x {b:5.2f}s")
        if base is save_s:  # the same against a save_file made durable, as a version is
            print(f"{'  / save_file + fsync':<44}{a / durable:>9.2f}x{b / durable:>18.2f}x")
    for who in ("mlflow", "modelshelf"):
        out[f"{who}_storage_ratio"] = out[f"{who}_bytes"] / one_model
    print(
        f"{f'storage of {n} checkpoints / one model':<44}"
        f"{out['mlflow_storage_ratio']:>16.2f}x{out['modelshelf_storage_ratio']:>17.2f}x"
    )
    print(f"\nwrote {save_results(sized('peers', args.mib), out)}")


if __name__ == "__main__":
    main()
