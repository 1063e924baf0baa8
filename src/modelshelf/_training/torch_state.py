"""Host-memory snapshots of torch training state, shared by the torch-based callbacks."""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._errors import UnsafeLoadError
from .._models.torch import torch_parts
from .._models.torch_format import WEIGHTS
from .engine import STATE_FILE, Parts

Key = tuple[Any, ...]  # where a tensor lies in what is copied: the keys and indexes on the way
Copy = Callable[[Key, torch.Tensor], torch.Tensor]


def fresh_copy(_key: Key, t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", copy=True)


class HostBuffers:
    """Host-memory copies of a training's tensors, reused from one checkpoint to the next.

    Copying into memory the process touched before costs no page faults, which is most of
    what a fresh copy costs (pinned memory for CUDA tensors, so the copy is a DMA). A
    snapshot takes a free set of buffers and gives it back once the writer thread has written
    it; at most two sets are kept, one filled while the other is written.
    """

    def __init__(self) -> None:
        self._free: list[dict[Key, torch.Tensor]] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}  # a learner exported with its callbacks takes no buffers along

    def __setstate__(self, _state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def take(self) -> tuple[Copy, Callable[[], None]]:
        """A copy function into a free set (made as needed), and the call that frees it."""
        with self._lock:
            buffers = self._free.pop() if self._free else {}

        def copy(key: Key, t: torch.Tensor) -> torch.Tensor:
            buf = buffers.get(key)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                pin = t.is_cuda and torch.cuda.is_available()
                buf = buffers[key] = torch.empty(t.shape, dtype=t.dtype, pin_memory=pin)
            return buf.copy_(t.detach())

        def release() -> None:
            with self._lock:
                if len(self._free) < 2:
                    self._free.append(buffers)

        return copy, release


def to_host(obj: Any, copy: Copy = fresh_copy, key: Key = ()) -> Any:
    """A copy of ``obj`` whose tensors are detached copies in CPU memory (containers rebuilt);
    ``copy(key, tensor)`` makes each, ``key`` saying where it lies in ``obj``."""
    if isinstance(obj, torch.Tensor):
        return copy(key, obj)
    if isinstance(obj, dict):
        pairs = [(k, to_host(v, copy, (*key, k))) for k, v in obj.items()]
        try:
            return type(obj)(pairs)  # OrderedDict, Lightning's AttributeDict, ...
        except TypeError:
            return dict(pairs)
    if isinstance(obj, list):
        return [to_host(v, copy, (*key, i)) for i, v in enumerate(obj)]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_host(v, copy, (*key, i)) for i, v in enumerate(obj))
    return obj


def version_weights(version: Any) -> dict[str, torch.Tensor]:
    """The state dict stored in a model version (tied names restored), on the CPU."""
    from safetensors.torch import load_file

    state = load_file(str(version.path(WEIGHTS)))
    for alias, canonical in version.metadata.get("model", {}).get("tied", {}).items():
        state[alias] = state[canonical]
    return state


def model_parts(
    model: torch.nn.Module,
    state: dict[str, Any] | None,
    framework: str,
    init_args: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
    buffers: HostBuffers | None = None,
) -> Parts:
    """Weights (as safetensors) and, when ``state`` is given, the training state (torch.save),
    copied to host memory now (into ``buffers``, when given: freed once written).

    The training state is stored without its copy of the weights (``state_dict``): those are
    in the safetensors file already, and resuming reads them from there.
    """
    copy, release = buffers.take() if buffers is not None else (fresh_copy, None)
    blobs, info = torch_parts(
        model, init_args, to_host=lambda k, t: copy(("weights", k), t), recipe=recipe
    )
    info["framework"] = framework
    files: dict[str, Callable[[Path], None]] = {}
    if state is not None:
        snapshot = to_host({k: v for k, v in state.items() if k != "state_dict"}, copy, ("state",))

        def write_state(path: Path) -> None:
            torch.save(snapshot, path)

        files[STATE_FILE] = write_state
    return Parts(blobs=dict(blobs), info=info, files=files, cleanup=release)


def load_state(path: Path, allow_pickle: bool, ref: str) -> dict[str, Any]:
    """Load a training state with ``weights_only=True``; unpickle fully only if allowed."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise UnsafeLoadError(
                f"Resuming from {ref} needs to unpickle objects that weights_only loading refuses "
                f"({str(exc).splitlines()[0][:200]}). If you trust who saved it, pass "
                "allow_pickle=True to ShelfCheckpoint.",
                path=os.fspath(path),
            ) from None
        return torch.load(path, map_location="cpu", weights_only=False)  # type: ignore[no-any-return]


def load_resume(version: Any, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and the training state to resume from ``version`` (what the torch-based
    adapters restore; each puts them where its framework keeps them)."""
    state = load_state(version.path(STATE_FILE), allow_pickle, version.ref)
    return version_weights(version), state


def optimizer_config(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return {"class": type(optimizer).__name__, "param_groups": groups}
