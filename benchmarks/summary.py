"""The figures of the last ``make bench``, as one table: ``benchmarks/results/summary.md``.

Each figure is a ratio to a baseline measured in the same run of its benchmark (see each
script's docstring); the JSON files under ``benchmarks/results/`` hold the raw numbers.
"""

from __future__ import annotations

import json

from common import RESULTS


def load(name: str) -> dict:  # type: ignore[type-arg]
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def peer_rows(peers: dict) -> list[tuple[str, float, float]]:  # type: ignore[type-arg]
    """The MLflow comparison of one run of peers.py, as (figure, MLflow, modelshelf) rows."""
    rows = []
    mib = peers["model_mib"]
    for label, key in (
        ("first log / save_file + fsync", "first_log"),
        ("checkpoint log, head changed / save_file + fsync", "checkpoint_log"),
        ("re-log unchanged / save_file + fsync", "relog"),
    ):
        base = peers["save_file_fsync_s"]
        rows.append((f"{label} ({mib} MiB)", peers[f"mlflow_{key}_s"] / base,
                     peers[f"modelshelf_{key}_s"] / base))  # fmt: skip
    rows.append((f"load by alias, model rebuilt / load_file ({mib} MiB)",
                 peers["mlflow_load_ratio"], peers["modelshelf_load_ratio"]))  # fmt: skip
    rows.append((f"storage of the checkpoints / one model ({mib} MiB)",
                 peers["mlflow_storage_ratio"], peers["modelshelf_storage_ratio"]))  # fmt: skip
    return rows


def main() -> None:
    peers, dedup, cbs, models = load("peers"), load("dedup"), load("callbacks"), load("models")
    rows = [*(peer_rows(peers) if peers else []), *(
        peer_rows(large) if (large := load("peers_1024mib")) else [])]  # fmt: skip
    lines = [f"| figure | MLflow {peers.get('mlflow_version', '')} | modelshelf |", "|---|---|---|"]
    lines += [f"| {label} | {a:.2f}x | {b:.2f}x |" for label, a, b in rows]
    for result in (dedup, load("dedup_1024mib")):
        if result:
            n, mib = result["checkpoints"], round(result["model_mib"])
            for kind, label in (("head_only", "head-only"), ("lora", "LoRA-style")):
                lines.append(f"| {n} {label} checkpoints ({mib} MiB) / the bytes that changed "
                             f"| - | {result[kind]['stored_vs_limit']:.2f}x |")  # fmt: skip
    if cbs:
        lines.append("| training blocked per checkpoint / Lightning ModelCheckpoint | - | "
                     f"{cbs['ratio']:.2f}x |")  # fmt: skip
    frameworks = load("callbacks_frameworks")
    for name, own in (("keras", "Keras ModelCheckpoint"), ("fastai", "fastai SaveModelCallback")):
        if name in frameworks:
            result = frameworks[name]
            lines.append(
                f"| training blocked per checkpoint / {own} | - | {result['ratio']:.2f}x |"
            )
            if "epoch_end_ratio" in result:
                lines.append(
                    f"| ... of which at epoch ends (fit's end: {result['shelf_end_of_fit_s']:.2f}"
                    f" s) / {own} | - | {result['epoch_end_ratio']:.2f}x |"
                )
    if models:
        lines.append("| load_model, warm cache / load_file + load_state_dict | - | "
                     f"{models['load_vs_baseline']:.2f}x |")  # fmt: skip
    s3 = load("request_counts")
    if s3:
        ms = s3["latency_ms"]
        put, get = s3["s3fs: put one small file (baseline)"], s3["s3fs: read it back (baseline)"]
        for label, row, base in (
            ("log a small file", "log_artifact of one small file", put),
            ("get(name), fresh Shelf, new machine", "get('art4'), fresh Shelf, new machine", get),
            ("get(name), fresh Shelf, machine read it", "get('art4'), fresh Shelf, machine read it",
             get),
        ):  # fmt: skip
            mine = s3[row]
            lines.append(f"| S3, {ms:g} ms a request: {label} / s3fs by hand (requests: "
                         f"{mine['requests']} / {base['requests']}) | - | "
                         f"{mine['seconds'] / base['seconds']:.2f}x |")  # fmt: skip
        for row, base in ((r, b) for r in s3 for b in s3 if r.startswith("log_artifact of ")
                          and "small" not in r and b.startswith("s3fs: put_file")):  # fmt: skip
            lines.append(f"| S3: {row} / s3fs put_file | - | "
                         f"{s3[row]['seconds'] / s3[base]['seconds']:.2f}x |")  # fmt: skip
        for row, base in ((r, b) for r in s3 for b in s3 if r.startswith("download of ")
                          and b.startswith("s3fs: get_file")):  # fmt: skip
            lines.append(f"| S3: {row} / s3fs get_file | - | "
                         f"{s3[row]['seconds'] / s3[base]['seconds']:.2f}x |")  # fmt: skip
    table = "\n".join(lines) + "\n"
    (RESULTS / "summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
