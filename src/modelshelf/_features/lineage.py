"""Lineage: which runs made and used which versions, as a graph you can print or draw."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import IntegrityError, InvalidArgumentError, NotFoundError
from .._format.names import is_run_id
from .runs import Run

if TYPE_CHECKING:
    from .._core.repository import Repository
    from .._core.version import ArtifactVersion

DIRECTIONS = ("both", "upstream", "downstream")


@dataclass
class Lineage:
    """Versions and runs, and the edges between them.

    An edge is ``(from, to, kind)``: ``used`` goes from a version to the run that used it,
    ``logged`` from a run to the version it logged, ``resumed`` from a training run that
    stopped to the run that went on from where it stood (upstream only).
    """

    root: str
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "nodes": list(self.nodes.values()),
            "edges": [{"from": a, "to": b, "kind": k} for a, b, k in self.edges],
        }

    def _label(self, node_id: str) -> str:
        node = self.nodes[node_id]
        if node["kind"] == "version":
            aliases = f" [{', '.join(node['aliases'])}]" if node["aliases"] else ""
            return f"{node_id} ({node['type']}){aliases}"
        return f"{node['job_type']} run {node['run_id']} ({node['status']})"

    def to_dot(self) -> str:
        """Graphviz DOT source (``dot -Tsvg``)."""

        def q(text: str) -> str:
            return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = ["digraph lineage {", "  rankdir=LR;"]
        for node_id, node in self.nodes.items():
            shape = "box" if node["kind"] == "version" else "ellipse"
            bold = ", penwidth=2" if node_id == self.root else ""
            lines.append(f"  {q(node_id)} [shape={shape}, label={q(self._label(node_id))}{bold}];")
        for a, b, kind in self.edges:
            lines.append(f"  {q(a)} -> {q(b)} [label={q(kind)}];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def to_mermaid(self) -> str:
        """Mermaid flowchart source (renders on GitHub and in notebooks)."""
        ids = {node_id: f"n{i}" for i, node_id in enumerate(self.nodes)}

        def label(text: str) -> str:
            return text.replace('"', "#quot;")

        lines = ["graph LR"]
        for node_id, node in self.nodes.items():
            text = label(self._label(node_id))
            if node["kind"] == "version":
                lines.append(f'  {ids[node_id]}["{text}"]')
            else:
                lines.append(f'  {ids[node_id]}(["{text}"])')
        for a, b, kind in self.edges:
            lines.append(f"  {ids[a]} -->|{kind}| {ids[b]}")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        lines = [f"lineage of {self.root}: {len(self.nodes)} nodes, {len(self.edges)} edges"]
        lines += [f"  {self._label(a)} --{k}--> {self._label(b)}" for a, b, k in self.edges]
        return "\n".join(lines)


def version_node(v: ArtifactVersion) -> dict[str, Any]:
    return {
        "id": v.ref, "kind": "version", "name": v.name, "version": v.version,
        "type": v.type, "aliases": v.aliases,
    }  # fmt: skip


def run_node(r: Run) -> dict[str, Any]:
    return {
        "id": f"run:{r.id}", "kind": "run", "run_id": r.id, "name": r.name,
        "job_type": r.job_type, "status": r.status,
    }  # fmt: skip


def build(repo: Repository, ref: str, direction: str, depth: int | None) -> Lineage:
    if direction not in DIRECTIONS:
        raise InvalidArgumentError(
            f"Invalid direction {direction!r}: use one of {', '.join(DIRECTIONS)}.", value=direction
        )
    if depth is not None and (not isinstance(depth, int) or depth < 0):
        raise InvalidArgumentError(f"depth must be a non-negative int or None, not {depth!r}.")
    start = repo.get(ref)
    graph = Lineage(root=start.ref)
    graph.nodes[start.ref] = version_node(start)
    edges: set[tuple[str, str, str]] = set()
    for upstream in (True, False):
        if direction == ("downstream" if upstream else "upstream"):
            continue
        queue: deque[tuple[ArtifactVersion | Run, int]] = deque([(start, 0)])
        seen = {start.ref}
        while queue:
            item, hops = queue.popleft()
            if depth is not None and hops >= depth:
                continue
            for nxt, edge in _neighbours(repo, item, upstream):
                node = version_node(nxt) if hasattr(nxt, "ref") else run_node(nxt)  # type: ignore[arg-type]
                graph.nodes.setdefault(node["id"], node)
                edges.add(edge)
                if node["id"] not in seen:
                    seen.add(node["id"])
                    queue.append((nxt, hops + 1))
    graph.edges = sorted(edges)
    return graph


def _neighbours(
    repo: Repository, item: ArtifactVersion | Run, upstream: bool
) -> list[tuple[ArtifactVersion | Run, tuple[str, str, str]]]:
    out: list[tuple[ArtifactVersion | Run, tuple[str, str, str]]] = []
    if isinstance(item, Run):
        rid = f"run:{item.id}"
        if upstream:
            out += [(v, (v.ref, rid, "used")) for v in item.inputs()]
            resumed = _resumed_run(repo, item)
            if resumed is not None:
                out.append((resumed, (f"run:{resumed.id}", rid, "resumed")))
        else:
            out += [(v, (rid, v.ref, "logged")) for v in item.outputs()]
        return out
    if upstream:
        run = item.logged_by()
        if run is not None:
            out.append((run, (f"run:{run.id}", item.ref, "logged")))
    else:
        out += [(r, (item.ref, f"run:{r.id}", "used")) for r in item.used_by()]
    return out


def _resumed_run(repo: Repository, run: Run) -> Run | None:
    """The run a checkpoint callback's training resumed (``config["resumed_from"]["run"]``),
    if it is still on the shelf; a malformed entry is no edge."""
    resumed = run.config.get("resumed_from")
    run_id = resumed.get("run") if isinstance(resumed, dict) else None
    if not isinstance(run_id, str) or not is_run_id(run_id):
        return None
    try:
        return Run.load(repo, run_id)
    except (NotFoundError, IntegrityError):
        return None
