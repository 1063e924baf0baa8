"""Where a safetensors file's tensors lie, so that it is stored in chunks cut on tensor
boundaries: a fine-tune that changes the head stores only the head.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then
the tensors' bytes, their offsets counted from the end of the header.

A file is cut only where its header describes it exactly: every offset an integer, the
tensors back to back from the header's end to the file's end. Anything else (another format,
a damaged or crafted header) is stored whole, as any file is: chunking changes how bytes are
stored, never what they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

#: A chunk on its own: a tensor this large, or a run of smaller ones once it reaches this.
CHUNK_MIN = 1 << 20
#: Headers larger than this are not parsed (safetensors itself refuses them).
HEADER_LIMIT = 100 * 2**20


def header_length(prefix: bytes, file_size: int) -> int | None:
    """The header's length from the file's first 8 bytes, if it can be a safetensors header
    of a file of ``file_size`` bytes."""
    if len(prefix) < 8:
        return None
    n = int.from_bytes(prefix[:8], "little")
    return n if 2 <= n <= min(HEADER_LIMIT, file_size - 8) else None


def first_chunk_header(chunks: Sequence[Any]) -> tuple[dict[str, Any], int] | None:
    """The header (JSON object) of a safetensors file held as ``chunks``, and where its data
    starts, when the header lies whole in the first chunk (as modelshelf cuts); else None."""
    first = chunks[0]
    n = header_length(bytes(first[:8]), sum(len(c) for c in chunks))
    if n is None or 8 + n > len(first):
        return None
    try:
        header = json.loads(bytes(first[8 : 8 + n]))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return (header, 8 + n) if isinstance(header, dict) else None


def tensor_sizes(header: bytes, data_size: int) -> list[int] | None:
    """The sizes of the tensors in file order, when ``header`` (the JSON) describes exactly
    ``data_size`` bytes of tensors lying back to back; else None."""
    try:
        body = json.loads(header)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(body, dict):
        return None
    spans = []
    for key, value in body.items():
        if key == "__metadata__":
            continue
        offsets = value.get("data_offsets") if isinstance(value, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            return None
        spans.append((offsets[0], offsets[1]))
    spans.sort()
    at = 0
    for begin, end in spans:
        if begin != at:  # a gap or an overlap: not a layout to cut on
            return None
        at = end
    if at != data_size:
        return None
    return [end - begin for begin, end in spans]


def group(sizes: Sequence[int], minimum: int = CHUNK_MIN) -> list[range]:
    """Which consecutive pieces (of ``sizes`` bytes each) make each chunk: a piece of
    ``minimum`` bytes or more is a chunk of its own; a run of smaller pieces is one chunk,
    closed once it reaches ``minimum``. (A fine-tune's small adapters then share no chunk with
    the large frozen weights around them.) Empty pieces join their neighbours."""
    chunks: list[range] = []
    start, run = 0, 0
    for i, size in enumerate(sizes):
        if size >= minimum:
            if i > start:
                chunks.append(range(start, i))
            chunks.append(range(i, i + 1))
            start, run = i + 1, 0
            continue
        run += size
        if run >= minimum:
            chunks.append(range(start, i + 1))
            start, run = i + 1, 0
    if start < len(sizes) or not chunks:
        chunks.append(range(start, len(sizes)))
    return chunks


def cut(sizes: Sequence[int], minimum: int = CHUNK_MIN) -> list[range] | None:
    """How to cut a file made of pieces of ``sizes`` bytes (the header, then each tensor):
    the pieces of each chunk, or None when that would be one chunk (a small file is stored
    whole)."""
    chunks = group(sizes, minimum)
    return chunks if len(chunks) > 1 else None
