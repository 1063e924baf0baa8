"""Tell pickles by their bytes, not their names: loading one can run arbitrary code."""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

from .._errors import UnsafeLoadError


def pickle_kind(path: Path) -> str | None:
    """What pickle ``path`` holds ("a PyTorch zip archive with data.pkl", ...), or None."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return None
        pickled = [n for n in names if n.endswith(".pkl") or n.rsplit("/", 1)[-1] == "data.pkl"]
        if pickled:
            return f"a zip archive with the pickle {pickled[0]!r} (PyTorch's torch.save format)"
        return None
    if _looks_like_pickle(head):
        return "a raw pickle stream"
    return None


def _looks_like_pickle(head: bytes) -> bool:
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True  # PROTO opcode: protocols 2-5 (torch's legacy format starts so too)
    if not head or head[:1] not in b"(]}cI":
        return False
    # Protocol 0/1 pickles: parse (never execute) the opcodes of the first bytes.
    try:
        ops = 0
        for _op, _arg, _pos in pickletools.genops(io.BytesIO(head)):
            ops += 1
            if ops >= 8:
                return True
    except Exception:
        return ops >= 3
    return ops >= 2


def refuse(path: Path, shown_as: str, kind: str) -> UnsafeLoadError:
    return UnsafeLoadError(
        f"Refusing to load {shown_as!r}: it is {kind}, and unpickling can run arbitrary code. "
        "Load it only if you trust who logged it, with load_model(..., allow_pickle=True).",
        path=str(path),
    )
