"""The ``modelshelf`` command line (), built with Typer and Rich.

Errors print one line on stderr and exit with status 1 (``--debug`` shows the traceback);
usage errors exit with status 2.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from .. import cache
from .._api import shelf as default_shelf
from .._errors import IntegrityError, ModelshelfError
from .._progress import human_size, listening
from .._shelf import Shelf

PROGRESS_MIN_BYTES = 4 * 1024 * 1024


class _State:
    shelf_url: str | None = None
    debug: bool = False


state = _State()
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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
        for n in shelf.artifacts(type=type_):
            versions = shelf.versions(n)
            last = versions[-1] if versions else None
            rows.append(
                {
                    "name": n,
                    "type": last.type if last else None,
                    "versions": len(versions),
                    "latest": last.ref if last else None,
                    "size": last.size if last else 0,
                    "updated": last.created_at.isoformat() if last else None,
                }
            )
        if as_json:
            _print_json(rows)
            return
        table = Table("name", "type", "versions", "latest", "size", box=None)
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
    table = Table("version", "aliases", "tags", "size", "created", "run", box=None)
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


@app.command()
def show(ref: str, as_json: JsonOpt = False) -> None:
    """Show one version: labels, metadata and files."""
    v = _shelf().get(ref)
    files = {p: {"size": f.size, "digest": f.digest, "uri": f.uri} for p, f in v.files.items()}
    if as_json:
        _print_json({**v.to_dict(), "files": files})
        return
    out.print(f"[bold]{v.ref}[/bold]  ({v.type}, {human_size(v.size)}, created {_when(v)})")
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
    name: str,
    metric: Annotated[
        list[str] | None, typer.Option("--metric", "-m", help="Metric to show.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """A leaderboard of the versions of NAME."""
    rows = _shelf().compare(name, metrics=metric or None)
    if as_json:
        _print_json(rows)
        return
    metrics = sorted({m for r in rows for m in r["metrics"]})
    configs = sorted({c for r in rows for c in r["config"]})
    table = Table("version", "aliases", *metrics, *configs, box=None)
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
    ref: str,
    force: Annotated[bool, typer.Option("--force", help="Also if it has aliases.")] = False,
) -> None:
    """Delete a version (gc frees its bytes)."""
    v = _shelf().delete(ref, force=force)
    out.print(f"deleted {v.ref}")


@app.command()
def prune(
    name: str,
    keep_last: Annotated[int, typer.Option("--keep-last", min=0, help="Versions to keep.")],
    include_aliased: Annotated[
        bool, typer.Option("--include-aliased", help="Delete aliased versions too.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete all but the newest versions of NAME (aliased ones are kept)."""
    gone = _shelf().prune(
        name, keep_last=keep_last, keep_aliased=not include_aliased, dry_run=dry_run
    )
    if as_json:
        _print_json({"dry_run": dry_run, "deleted": [v.ref for v in gone]})
        return
    verb = "would delete" if dry_run else "deleted"
    out.print(
        f"{verb} {len(gone)} version(s)" + (": " + ", ".join(v.ref for v in gone) if gone else "")
    )


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
    as_json: JsonOpt = False,
) -> None:
    """List runs: status, job type, start, and their summary."""
    found = _shelf().runs(job_type=job_type, status=status)
    if as_json:
        _print_json([r.to_dict() for r in found])
        return
    table = Table("run", "job type", "status", "started", "summary", box=None)
    for r in found:
        summary = ", ".join(f"{k}={_cell(v)}" for k, v in sorted(r.summary.items())[:4])
        table.add_row(
            r.id,
            r.job_type,
            r.status,
            r.started_at.astimezone().strftime("%Y-%m-%d %H:%M"),
            summary,
        )
    out.print(table)


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
