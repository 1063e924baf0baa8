"""The ``modelshelf`` command line (), built with Typer and Rich.

Errors print one line on stderr and exit with status 1 (``--debug`` shows the traceback);
usage errors exit with status 2.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from .. import cache
from .._api import shelf as default_shelf
from .._config import cache_dir
from .._errors import IntegrityError, InvalidArgumentError, ModelshelfError, NotFoundError
from .._features.cleanup import storage_report
from .._features.diff import metrics_of
from .._format.records import parse_time
from .._progress import PROGRESS_MIN_BYTES, human_size, listening
from .._shelf import Shelf


class _State:
    shelf_url: str | None = None
    debug: bool = False


state = _State()
# Markup off: names, metadata and errors come from a shelf, and "[null, 28, 28, 1]" or
# "[bold]" in them must print as they are. Styles are given as Text styles where wanted.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def _shelf() -> Any:
    return Shelf(state.shelf_url) if state.shelf_url else default_shelf()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _when(version: Any) -> str:
    return str(version.created_at.astimezone().strftime("%Y-%m-%d %H:%M"))


@contextmanager
def _transfer(total: int, what: str) -> Iterator[None]:
    """A progress bar for transfers above a few MB (on a terminal only)."""
    if total < PROGRESS_MIN_BYTES or not err.is_terminal:
        yield
        return
    columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(what, total=total)
        with listening(lambda n: progress.advance(task, n)):
            yield


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", text.lower())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size such as 500MB, 2GiB or 1048576.")
    unit = (match.group(2) or "").rstrip("b").rstrip("i")
    factor = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[unit]
    return int(float(match.group(1)) * factor)


app = typer.Typer(
    name="modelshelf",
    help="Version machine-learning models on any filesystem.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cache_app = typer.Typer(help="The local download cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


@app.callback()
def _main(
    shelf: Annotated[
        str | None,
        typer.Option("--shelf", envvar="MODELSHELF_ROOT", help="Shelf path or URL."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    """Version machine-learning models on any filesystem."""
    state.shelf_url = shelf
    state.debug = debug


def _summary(repo: Any, name: str) -> Any:
    """``repo.summary(name)``, or None for a name that was renamed."""
    try:
        return repo.summary(name)
    except NotFoundError:
        return None


@app.command("ls")
def ls(
    name: Annotated[str | None, typer.Argument(help="An artifact: list its versions.")] = None,
    type_: Annotated[
        str | None, typer.Option("--type", help="Only artifacts of this type.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """List artifacts, or the versions of one."""
    shelf = _shelf()
    if name is None:
        rows = []
        repo = shelf.repository
        # A summary per name (not every version, see Repository.summary), several at once:
        # on a bucket each is a listing and a read. A renamed name is left out.
        names = shelf.artifacts(type=type_) if type_ else repo.folders()
        with ThreadPoolExecutor(8) as pool:
            summaries = list(pool.map(lambda n: _summary(repo, n), names))
        for n, summary in zip(names, summaries, strict=True):
            record = summary.record if summary is not None else None
            if summary is None or record is None:
                continue  # renamed; or every version deleted (rm NAME --all): a reserved name
            rows.append(
                {
                    "name": n,
                    "type": record["type"],
                    "versions": summary.versions,
                    "latest": f"{n}:v{summary.latest}",
                    "size": record["size"],
                    "updated": parse_time(record["created_at"]).isoformat(),
                }
            )
        if as_json:
            _print_json(rows)
            return
        table = Table(box=None)
        _keep_column(table, "name", [r["name"] for r in rows])
        for column in ("type", "versions"):
            table.add_column(column)
        _keep_column(table, "latest", [r["latest"] or "" for r in rows])
        table.add_column("size")
        for r in rows:
            table.add_row(
                r["name"], r["type"], str(r["versions"]), r["latest"], human_size(r["size"])
            )
        out.print(table)
        return
    versions = shelf.versions(name)
    if as_json:
        _print_json([v.to_dict() for v in versions])
        return
    table = Table(box=None)
    _keep_column(table, "version", [v.ref for v in versions])
    for column in ("aliases", "tags", "size", "created"):
        table.add_column(column, overflow="fold")
    table.add_column("run", overflow="ellipsis", max_width=24)
    for v in versions:
        table.add_row(
            v.ref,
            ", ".join(v.aliases),
            ", ".join(v.tags),
            human_size(v.size),
            _when(v),
            v.run_id or "",
        )
    out.print(table)


def _keep_column(table: Table, header: str, cells: list[str]) -> None:
    """A column that never wraps or shrinks below its longest cell: the others give way."""
    width = max([len(header), *map(len, cells)])
    table.add_column(header, no_wrap=True, min_width=width)


@app.command()
def show(ref: str, as_json: JsonOpt = False) -> None:
    """Show one version: labels, metadata and files."""
    shelf = _shelf()
    v = shelf.get(ref)
    files = {p: {"size": f.size, "digest": f.digest, "uri": f.uri} for p, f in v.files.items()}
    storage = storage_report(shelf.repository, v)
    if as_json:
        _print_json({**v.to_dict(), "files": files, "storage": storage})
        return
    out.print(Text(v.ref, style="bold"), f" ({v.type}, {human_size(v.size)}, created {_when(v)})")
    out.print(f"aliases: {', '.join(v.aliases) or '-'}    tags: {', '.join(v.tags) or '-'}")
    if v.description:
        out.print(f"description: {v.description}")
    out.print(f"digest: {v.digest}")
    if v.run_id:
        out.print(f"logged by run: {v.run_id}")
    if v.metadata:
        out.print("metadata: " + json.dumps(v.metadata, sort_keys=True))
    table = Table("file", "size", "digest / uri", box=None)
    for p, f in sorted(v.files.items()):
        table.add_row(p, human_size(f.size), f.uri or (f.digest or "")[:19])
    out.print(table)
    out.print(_storage_lines(v.name, storage), markup=False)


def _storage_lines(name: str, s: dict[str, Any]) -> str:
    """What ``show`` says of how a version is stored and what it shares."""
    shared = s["stored_bytes"] - s["own_bytes"]
    lines = [
        f"stored: {s['blobs']} blob{'s' if s['blobs'] != 1 else ''}, "
        f"{human_size(s['own_bytes'])} only in this version, "
        f"{human_size(shared)} shared with other versions"
    ]
    if s["dedup_ratio"] is not None:
        lines.append(
            f"dedup: the versions of {name} hold {human_size(s['artifact_bytes'])} in "
            f"{human_size(s['artifact_stored_bytes'])} of blobs ({s['dedup_ratio']:.2f}x)"
        )
    return "\n".join(lines)


@app.command()
def diff(a: str, b: str, as_json: JsonOpt = False) -> None:
    """What changed from version A to version B (files, metadata, config, metrics, tensors)."""
    result = _shelf().diff(a, b)
    if as_json:
        _print_json(result.to_dict())
    else:
        out.print(str(result), markup=False)


@app.command()
def compare(
    refs: Annotated[list[str], typer.Argument(help="Versions (NAME:vN, NAME:alias) or NAMEs.")],
    metric: Annotated[
        list[str] | None, typer.Option("--metric", "-m", help="Metric to show.")
    ] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="Order rows by this metric.")] = None,
    descending: Annotated[
        bool, typer.Option("--desc", help="Highest first (with --sort).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """A leaderboard of versions: every version of each NAME, and each NAME:vN given."""
    shelf = _shelf()
    wanted = [v.ref for r in refs for v in (shelf.versions(r) if ":" not in r else [shelf.get(r)])]
    rows = shelf.compare(wanted, metrics=metric or None) if wanted else []
    if sort is not None:
        scored = [r for r in rows if isinstance(r["metrics"].get(sort), (int, float))]
        if not scored:
            shown = sorted({m for r in rows for m in r["metrics"]})
            raise typer.BadParameter(
                f"no version records {sort!r}; metrics: {', '.join(shown) or 'none'}.",
                param_hint="--sort",
            )
        rest = [r for r in rows if r not in scored]
        rows = sorted(scored, key=lambda r: r["metrics"][sort], reverse=descending) + rest
    if as_json:
        _print_json(rows)
        return
    metrics = sorted({m for r in rows for m in r["metrics"]})
    configs = sorted({c for r in rows for c in r["config"]})
    table = Table(box=None)
    _keep_column(table, "version", [r["ref"] for r in rows])
    for column in ("aliases", *metrics, *configs):
        table.add_column(column)
    for r in rows:
        cells = [_cell(r["metrics"].get(m)) for m in metrics]
        cells += [_cell(r["config"].get(c)) for c in configs]
        table.add_row(r["ref"], ", ".join(r["aliases"]), *cells)
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


@app.command()
def lineage(
    ref: str,
    direction: Annotated[str, typer.Option(help="both, upstream or downstream.")] = "both",
    depth: Annotated[int | None, typer.Option(help="Hops to follow (default: all).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, dot or mermaid.")] = "text",
    as_json: JsonOpt = False,
) -> None:
    """The runs and versions that made REF, and those that used it."""
    graph = _shelf().lineage(ref, direction=direction, depth=depth)
    if as_json:
        _print_json(graph.to_dict())
    elif fmt == "dot":
        sys.stdout.write(graph.to_dot())
    elif fmt == "mermaid":
        sys.stdout.write(graph.to_mermaid())
    elif fmt == "text":
        out.print(str(graph), markup=False)
    else:
        raise typer.BadParameter(f"{fmt!r}: use text, dot or mermaid.", param_hint="--format")


@app.command()
def alias(ref: str, alias: str) -> None:
    """Point ALIAS at the version REF names (moving it if set elsewhere)."""
    v = _shelf().get(ref).set_alias(alias)
    out.print(f"{v.name}:{alias} -> {v.ref}")


@app.command()
def unalias(ref: str, alias: str) -> None:
    """Remove ALIAS from the version REF names."""
    v = _shelf().get(ref).remove_alias(alias)
    out.print(f"removed {alias!r} from {v.ref}")


@app.command()
def tag(
    ref: str,
    tags: Annotated[list[str], typer.Argument(help="Tags to add.")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove the tags instead.")] = False,
) -> None:
    """Add (or remove) tags on a version."""
    v = _shelf().get(ref)
    v = v.remove_tags(*tags) if remove else v.add_tags(*tags)
    out.print(f"{v.ref} tags: {', '.join(v.tags) or '-'}")


@app.command()
def log(
    path: Path,
    name: Annotated[str, typer.Option("--name", "-n", help="Artifact name.")],
    type_: Annotated[str, typer.Option("--type", "-t", help="Artifact type, e.g. model.")],
    alias_: Annotated[list[str] | None, typer.Option("--alias", "-a", help="Alias to set.")] = None,
    tag_: Annotated[list[str] | None, typer.Option("--tag", help="Tag to add.")] = None,
    description: Annotated[str | None, typer.Option(help="Description.")] = None,
    metadata: Annotated[str | None, typer.Option(help="Metadata as a JSON object.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Log a file or folder as the next version of NAME."""
    meta = None
    if metadata is not None:
        try:
            meta = json.loads(metadata)
        except ValueError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from None
    if not path.exists():
        raise typer.BadParameter(f"{str(path)!r} does not exist.", param_hint="PATH")
    total = (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )
    with _transfer(total, f"log {name}"):
        v = _shelf().log_artifact(
            path, name, type_, aliases=alias_ or (), tags=tag_ or (),
            metadata=meta, description=description,
        )  # fmt: skip
    if as_json:
        _print_json(v.to_dict())
    else:
        out.print(f"{v.ref}  {human_size(v.size)}  aliases: {', '.join(v.aliases)}")


@app.command()
def download(
    ref: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Folder to fill.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Download (and verify) a version; print the folder."""
    v = _shelf().get(ref)
    with _transfer(v.size, f"download {v.ref}"):
        folder = v.download(output)
    if as_json:
        _print_json({"ref": v.ref, "path": str(folder)})
    else:
        sys.stdout.write(f"{folder}\n")


@app.command()
def verify(
    ref: Annotated[str | None, typer.Argument(help="A version; default: every version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check every stored byte against its digest; exit 1 if anything is wrong."""

    shelf = _shelf()
    versions = (
        [shelf.get(ref)] if ref else [v for n in shelf.artifacts() for v in shelf.versions(n)]
    )
    results = []
    for v in versions:
        try:
            v.verify()
            results.append({"ref": v.ref, "ok": True, "error": None})
        except IntegrityError as exc:
            results.append({"ref": v.ref, "ok": False, "error": str(exc)})
    bad = [r for r in results if not r["ok"]]
    if as_json:
        _print_json(results)
    else:
        for r in results:
            out.print(
                f"{'ok ' if r['ok'] else 'BAD'} {r['ref']}"
                + (f"  {r['error']}" if r["error"] else ""),
                markup=False,
            )
        out.print(f"{len(results) - len(bad)} ok, {len(bad)} bad")
    if bad:
        raise typer.Exit(1)


@app.command("rm")
def rm(
    ref: Annotated[
        str, typer.Argument(help="A version (NAME:vN, NAME:alias), or NAME with --all.")
    ],
    all_: Annotated[
        bool, typer.Option("--all", help="Delete every version and alias of NAME.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Also if it has aliases.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete a version, or with --all a whole artifact (gc frees the bytes)."""
    shelf = _shelf()
    if not all_ and ":" not in ref:
        raise InvalidArgumentError(
            f"{ref!r} names an artifact, not a version: use 'rm {ref}:vN' for one version or "
            f"'rm {ref} --all' for all of them."
        )
    gone = shelf.delete(ref, force=force, all_versions=all_)
    deleted = gone if isinstance(gone, list) else [gone]
    if as_json:
        _print_json({"deleted": [v.ref for v in deleted]})
        return
    out.print(f"deleted {', '.join(v.ref for v in deleted) or 'nothing'}")


@app.command()
def rename(old: str, new: str, as_json: JsonOpt = False) -> None:
    """Rename the artifact OLD to NEW, with all its versions, aliases, tags and lineage."""
    shelf = _shelf()
    shelf.rename(old, new)
    if as_json:
        _print_json({"renamed": old, "to": new})
        return
    out.print(f"renamed {old} to {new}")


_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _parse_age(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if not match:
        raise typer.BadParameter(f"{text!r} is not an age such as 30d, 12h, 2w or 90m.")
    return float(match.group(1)) * _AGE_UNITS[match.group(2)]


@app.command()
def prune(
    name: str,
    keep_last: Annotated[
        int | None, typer.Option("--keep-last", min=0, help="Keep the newest N versions.")
    ] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Only versions older than this: 30d, 12h.")
    ] = None,
    unused: Annotated[
        bool, typer.Option("--unused", help="Only versions no run used and with no alias.")
    ] = False,
    include_aliased: Annotated[
        bool, typer.Option("--include-aliased", help="Delete aliased versions too.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete the versions of NAME that every given rule selects (aliased ones are kept)."""
    shelf = _shelf()
    if keep_last is None and older_than is None and not unused:
        raise typer.BadParameter("give --keep-last N, --older-than AGE or --unused (they combine).")
    gone = shelf.prune(
        name, keep_last=keep_last, keep_aliased=not include_aliased, dry_run=dry_run,
        older_than=_parse_age(older_than) if older_than is not None else None, unused=unused,
    )  # fmt: skip
    freed = shelf.freed_bytes(gone) if dry_run else None
    if as_json:
        _print_json({"dry_run": dry_run, "deleted": [v.ref for v in gone], "gc_would_free": freed})
        return
    verb = "would delete" if dry_run else "deleted"
    line = f"{verb} {len(gone)} version(s)" + (
        ": " + ", ".join(v.ref for v in gone) if gone else ""
    )
    out.print(line)
    if freed is not None:
        out.print(f"gc would then free {human_size(freed)}")


@app.command()
def describe(ref: str, text: str, as_json: JsonOpt = False) -> None:
    """Set the description of the version REF names."""
    v = _shelf().get(ref).set_description(text)
    if as_json:
        _print_json(v.to_dict())
    else:
        out.print(f"{v.ref}: {v.description}")


@app.command()
def meta(
    ref: str,
    pairs: Annotated[
        list[str] | None, typer.Argument(help="key=value; a value is read as JSON if it parses.")
    ] = None,
    unset: Annotated[list[str] | None, typer.Option("--unset", help="Remove this key.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set (key=value) or remove (--unset key) metadata keys of the version REF names."""
    updates: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r}: use key=value.", param_hint="PAIRS")
        try:
            updates[key] = json.loads(raw)
        except ValueError:
            updates[key] = raw
    if not updates and not unset:
        raise typer.BadParameter("give key=value pairs or --unset KEY.")
    v = _shelf().get(ref)
    if updates:
        v = v.update_metadata(updates)
    if unset:
        v = v.remove_metadata(*unset)
    if as_json:
        _print_json({"ref": v.ref, "metadata": v.metadata})
    else:
        out.print(f"{v.ref} metadata: {json.dumps(v.metadata, sort_keys=True)}")


@app.command()
def best(
    name: str,
    metric: str,
    lowest: Annotated[bool, typer.Option("--min", help="Lowest wins (the default).")] = False,
    highest: Annotated[bool, typer.Option("--max", help="Highest wins.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The version of NAME with the lowest (--min) or highest (--max) METRIC."""
    if lowest and highest:
        raise typer.BadParameter("give --min or --max, not both.")
    v = _shelf().best(name, metric, mode="max" if highest else "min")
    value = metrics_of(v).get(metric)
    if as_json:
        _print_json({"ref": v.ref, "metric": metric, "value": value, "aliases": v.aliases})
    else:
        out.print(f"{v.ref}  {metric}={_cell(value)}  aliases: {', '.join(v.aliases) or '-'}")


@app.command()
def aliases(
    name: str,
    history: Annotated[bool, typer.Option("--history", help="Every move, oldest first.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The aliases of NAME and the version each points to; --history: each move."""
    shelf = _shelf()
    if history:
        events = shelf.alias_history(name)
        rows = [
            {
                "alias": e.alias, "at": e.at.isoformat(), "run": e.run_id,
                "from": None if e.previous is None else f"v{e.previous}",
                "to": None if e.version is None else f"v{e.version}",
            }
            for e in events
        ]  # fmt: skip
        if as_json:
            _print_json(rows)
            return
        table = Table("alias", "at", "from", "to", "run", box=None)
        for r in rows:
            when = _dt.datetime.fromisoformat(r["at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(
                r["alias"], when, r["from"] or "-", r["to"] or "(removed)", r["run"] or ""
            )
        out.print(table)
        return
    held = {a: v.ref for v in shelf.versions(name) for a in v.aliases}
    if as_json:
        _print_json(held)
        return
    table = Table("alias", "version", box=None)
    for a, ref in sorted(held.items()):
        table.add_row(a, ref)
    out.print(table)


@app.command()
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
    grace: Annotated[float, typer.Option(help="Keep blobs younger than this (seconds).")] = 3600.0,
    as_json: JsonOpt = False,
) -> None:
    """Free the bytes that no version needs."""
    report = _shelf().gc(dry_run=dry_run, grace_period=grace)
    if as_json:
        _print_json(report.to_dict())
    else:
        out.print(str(report))


@app.command()
def fsck(
    repair: Annotated[
        bool, typer.Option("--repair", help="Set the damage aside (moves, never deletes).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check every record, manifest and blob; report the damage per version.

    Exits with status 1 while damage is left.
    """
    report = _shelf().fsck(repair=repair)
    if as_json:
        _print_json(report.to_dict())
    else:
        out.print(str(report), markup=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def copy(
    ref: str,
    to: Annotated[str, typer.Option("--to", help="Target shelf path or URL.")],
    aliases: Annotated[bool, typer.Option("--aliases", help="Copy aliases too.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy a version (name:vN) or all versions (name) to another shelf."""
    shelf = _shelf()
    total = sum(v.size for v in ([shelf.get(ref)] if ":" in ref else shelf.versions(ref)))
    with _transfer(total, f"copy {ref}"):
        copied = shelf.copy(ref, to, aliases=aliases)
    if as_json:
        _print_json([v.to_dict() for v in copied])
    else:
        for v in copied:
            out.print(f"{v.ref} on {to}  aliases: {', '.join(v.aliases)}")


@app.command()
def runs(
    job_type: Annotated[str | None, typer.Option("--job-type", help="Only this job type.")] = None,
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    sort: Annotated[
        str | None, typer.Option("--sort", help="Order by this summary metric.")
    ] = None,
    descending: Annotated[bool, typer.Option("--desc", help="Highest first.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List runs: status, job type, start, and their summary (ranked with --sort)."""
    found = _shelf().runs(job_type=job_type, status=status, order_by=sort, descending=descending)
    if as_json:
        _print_json([r.to_dict() for r in found])
        return
    table = Table(box=None)
    _keep_column(table, "run", [r.id for r in found])
    for column in ("job type", "status", "started"):
        table.add_column(column)
    table.add_column("summary", overflow="fold")
    for r in found:
        shown = sorted(r.summary.items(), key=lambda kv: (kv[0] != sort, kv[0]))[:4]
        summary = ", ".join(f"{k}={_cell(v)}" for k, v in shown)
        table.add_row(
            r.id,
            r.job_type,
            r.status,
            r.started_at.astimezone().strftime("%Y-%m-%d %H:%M"),
            summary,
        )
    out.print(table)


_SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 24) -> str:
    """``values`` as a line of block characters, resampled to at most ``width``."""
    finite = [v for v in values if isinstance(v, (int, float)) and v == v]
    if not finite:
        return ""
    if len(finite) > width:
        finite = [finite[round(i * (len(finite) - 1) / (width - 1))] for i in range(width)]
    low, high = min(finite), max(finite)
    span = (high - low) or 1.0
    return "".join(_SPARKS[round((v - low) / span * (len(_SPARKS) - 1))] for v in finite)


@app.command("run")
def run_(run_id: str, as_json: JsonOpt = False) -> None:
    """One run: config, summary, metric history (a sparkline each), inputs and outputs."""
    r = _shelf().get_run(run_id)
    history = r.history()
    inputs, outputs = [v.ref for v in r.inputs()], [v.ref for v in r.outputs()]
    if as_json:
        _print_json({**r.to_dict(), "history": history, "inputs": inputs, "outputs": outputs})
        return
    out.print(Text(f"run {r.id}", style="bold"), f" ({r.job_type}, {r.status})")
    out.print(f"started {r.started_at.astimezone().strftime('%Y-%m-%d %H:%M:%S')}")
    if r.error:
        out.print(f"error: {r.error}")
    out.print("config: " + json.dumps(r.config, sort_keys=True, default=str))
    metrics = sorted({k for row in history for k in row if k not in ("step", "at")})
    if metrics:
        table = Table("metric", "steps", "first", "last", "min", "max", "history", box=None)
        for m in metrics:
            values = [row[m] for row in history if isinstance(row.get(m), (int, float))]
            if not values:
                continue
            table.add_row(
                m, str(len(values)), _cell(values[0]), _cell(values[-1]), _cell(min(values)),
                _cell(max(values)), sparkline(values),
            )  # fmt: skip
        out.print(table)
    if r.summary:
        out.print("summary: " + ", ".join(f"{k}={_cell(v)}" for k, v in sorted(r.summary.items())))
    out.print(f"inputs: {', '.join(inputs) or '-'}")
    out.print(f"outputs: {', '.join(outputs) or '-'}")


def _watcher_id(shelf: Any, name: str, alias: str | None, command: str) -> str:
    text = json.dumps([shelf.id, name, alias, command])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _done_before(shelf: Any, ref: str, watcher: str) -> bool:
    """Whether this watcher already ran its command for ``ref`` to the end (a restart after a
    kill that came between the command's end and the cursor's save)."""
    for r in shelf.get(ref).used_by():
        done = r.status in ("finished", "failed")
        if done and r.job_type == "evaluate" and r.config.get("watch", {}).get("id") == watcher:
            return True
    return False


@app.command()
def watch(
    name: str,
    command: Annotated[
        str, typer.Option("--exec", help="Command to run; {ref} becomes the version's ref.")
    ],
    alias_: Annotated[
        str | None, typer.Option("--alias", help="Fire on each move of this alias instead.")
    ] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries of a failure.")] = 0,
    poll: Annotated[float, typer.Option("--poll", min=0.05, help="Seconds between polls.")] = 2.0,
    cursor: Annotated[
        Path | None,
        typer.Option("--cursor", help="Where to keep what was handled (default: in the cache)."),
    ] = None,
    max_events: Annotated[
        int | None, typer.Option("--max-events", min=1, help="Stop after this many.")
    ] = None,
) -> None:
    """Run a command for each new version of NAME (or each move of --alias), as it lands.

    Each command runs inside a run of job type "evaluate" that uses the version, so lineage
    shows it; a failing command is reported with its exit status and retried --retries times.
    A restarted watcher neither misses nor repeats a version (the cursor, and the runs).
    """
    shelf = _shelf()
    watcher = _watcher_id(shelf, name, alias_, command)
    where = cursor or cache_dir() / "watch" / f"{watcher}.json"

    def evaluate(version: Any) -> None:
        ref = version.ref
        if _done_before(shelf, ref, watcher):
            err.print(f"{ref}: already evaluated by this watcher; skipped")
            return
        config = {"watch": {"id": watcher, "name": name, "alias": alias_}, "ref": ref}
        r = shelf.run(job_type="evaluate", config={**config, "command": command})
        status, error = "failed", "interrupted"  # unless the command ends well
        try:
            r.use(ref)
            line = command.replace("{ref}", shlex.quote(ref))
            env = {**os.environ, "MODELSHELF_REF": ref, "MODELSHELF_WATCH_RUN": r.id}
            for attempt in range(retries + 1):
                code = subprocess.run(line, shell=True, env=env, check=False).returncode
                if code == 0:
                    err.print(f"{ref}: {line} -> ok")
                    status, error = "finished", ""
                    break
                tries = f"attempt {attempt + 1} of {retries + 1}"
                err.print(f"{ref}: {line} exited with status {code} ({tries})")
                error = f"{line} exited with status {code}"
        finally:
            r.finish(status, error or None)

    err.print(f"watching {name}" + (f":{alias_}" if alias_ else "") + f" every {poll:g} s")
    try:
        shelf.watch(name, evaluate, alias=alias_, poll=poll, cursor=where, max_events=max_events)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    host: Annotated[
        str, typer.Option(help="Address to bind (anything but 127.0.0.1 is warned about).")
    ] = "127.0.0.1",
    allow_writes: Annotated[
        bool,
        typer.Option(
            "--allow-writes",
            help="Allow alias, tag, description, delete and gc from the page (each write "
            "still needs the token in the printed link).",
        ),
    ] = False,
    open_: Annotated[bool, typer.Option("--open", help="Open it in a browser.")] = False,
) -> None:
    """Serve a web app over the shelf: artifacts, versions, compare, lineage, runs."""
    from ..ui import serve

    serve(
        _shelf(),
        host=host,
        port=port,
        allow_writes=allow_writes,
        open_browser=open_,
        say=lambda line: err.print(line, markup=False),
    )


@app.command()
def report(
    target: Annotated[str, typer.Argument(help="A version (NAME:vN, NAME:alias) or a NAME.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")],
) -> None:
    """Write one self-contained HTML file (table, charts, lineage, comparison) to share."""
    from ..ui import write_report

    path = write_report(_shelf(), target, output)
    out.print(f"wrote {path} ({human_size(path.stat().st_size)})")


@cache_app.command("info")
def cache_info(as_json: JsonOpt = False) -> None:
    """Where the cache is and what it holds."""

    info = cache.info()
    if as_json:
        _print_json(
            {
                "path": str(info.path),
                "bytes": info.bytes,
                "blobs": info.blobs,
                "versions": info.versions,
            }
        )
    else:
        held = f"{info.blobs} blob(s), {info.versions} version folder(s)"
        out.print(f"{info.path}: {human_size(info.bytes)} in {held}")


@cache_app.command("prune")
def cache_prune(
    max_bytes: Annotated[
        str, typer.Option("--max-bytes", help="Keep at most this much, e.g. 10GB.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Free the least recently used cached files down to --max-bytes."""

    report = cache.prune(_parse_size(max_bytes))
    if as_json:
        _print_json(report.__dict__)
    else:
        freed = f"freed {human_size(report.freed_bytes)} ({report.freed_blobs} blob(s))"
        out.print(f"{freed}; {human_size(report.bytes_left)} left")


def run(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status instead of exiting."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (ModelshelfError, OSError) as exc:
        if state.debug:
            traceback.print_exc()
        message = str(exc).strip().replace("\n", " ") or type(exc).__name__
        sys.stderr.write(f"error: {message}\n")
        return 1
    return 0
