"""PyTorch models as safetensors, written tensor by tensor, and the recipe to rebuild them.

Imported only when a torch model is logged or loaded.
"""

from __future__ import annotations

import bisect
import importlib
import inspect
import json
import math
import pickle
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import torch

from .._config import CHUNK_SIZE
from .._errors import (
    IntegrityError,
    InvalidArgumentError,
    InvalidMetadataError,
    UnsupportedModelError,
)
from .._format.records import clean_metadata
from .._format.safetensors import cut, first_chunk_header
from .pickles import pickle_kind, refuse

WEIGHTS = "model.safetensors"

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
                     ("uint16", "U16"), ("uint32", "U32"), ("uint64", "U64")):  # fmt: skip
    if hasattr(torch, _name):
        _DTYPES[getattr(torch, _name)] = _code
_TORCH_DTYPES = {code: dtype for dtype, code in _DTYPES.items()}


def is_lightning(model: Any) -> bool:
    return any(
        c.__name__ == "LightningModule"
        and c.__module__.startswith(("lightning.pytorch", "pytorch_lightning"))
        for c in type(model).__mro__
    )


def split_shared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each tensor once: a name whose tensor is the very same memory as an earlier
    one (tied weights, e.g. an embedding shared with the output layer) becomes an alias."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise UnsupportedModelError(f"state_dict entry {name!r} is not a tensor ({type(t)}).")
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
               tuple(t.stride()), t.dtype)  # fmt: skip
        if t.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = t
    return tensors, aliases


def safetensors_header(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> bytes:
    """The first bytes of the safetensors file of ``tensors``: the header's length, then the
    header; the tensors' bytes follow in the dict's order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in _DTYPES:
            raise UnsupportedModelError(
                f"Tensor {name!r} has dtype {t.dtype}, which safetensors cannot store."
            )
        n = t.numel() * t.element_size()
        header[name] = {
            "dtype": _DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw


def _tensor_bytes(t: torch.Tensor) -> Iterator[Any]:
    """The bytes of one tensor, CHUNK_SIZE at a time (views, no copy of a CPU tensor)."""
    if t.numel() == 0:
        return
    flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    view = memoryview(flat)  # type: ignore[arg-type]
    for start in range(0, len(view), CHUNK_SIZE):
        yield view[start : start + CHUNK_SIZE]


def safetensors_stream(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Iterator[Any]:
    """The bytes of a safetensors file, yielded piece by piece (no whole-file buffer)."""
    yield safetensors_header(tensors, metadata)
    for t in tensors.values():
        yield from _tensor_bytes(t)


def safetensors_pieces(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> list[Callable[[], Iterator[Any]]] | None:
    """The same file as ``safetensors_stream``, cut into chunks on tensor boundaries (see
    ``_format.safetensors``): one callable per chunk, yielding its bytes; None when the file is
    too small to cut."""
    header = safetensors_header(tensors, metadata)
    order = list(tensors.values())
    sizes = [len(header), *(t.numel() * t.element_size() for t in order)]
    chunks = cut(sizes)
    if chunks is None:
        return None

    def piece(chunk: range) -> Callable[[], Iterator[Any]]:
        def buffers() -> Iterator[Any]:
            for i in chunk:
                if i == 0:
                    yield header
                else:
                    yield from _tensor_bytes(order[i - 1])

        return buffers

    return [piece(chunk) for chunk in chunks]


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


#: hparams keys that LightningCLI adds for its own load_from_checkpoint, not init arguments
_CLI_KEYS = ("_instantiator", "_class_path")


def recipe(model: torch.nn.Module, init_args: dict[str, Any] | None) -> dict[str, Any]:
    """What ``load_model`` needs to rebuild ``model``: its class and init arguments, checked
    by building one (on the meta device) and comparing its weights' names and shapes.

    Where that fails, ``init_args`` is None and ``why_not`` says what ``load_model`` will
    need (``log_parts`` warns once per artifact).
    """
    cls = type(model)
    out: dict[str, Any] = {"class": _class_path(cls), "lightning": is_lightning(model)}
    script = _script_of(cls)
    if script is not None:
        out["script"] = script
    why = None
    if init_args is not None:
        out["init_args"] = clean_metadata(init_args, "init_args")
    elif out["lightning"]:
        hparams = dict(model.hparams)  # type: ignore[arg-type]
        if any(hparams.pop(key, None) is not None for key in _CLI_KEYS):
            out["lightning_cli"] = True  # instantiated by LightningCLI (its hparams say so)
        try:
            out["init_args"] = clean_metadata(hparams, "hparams")
        except InvalidMetadataError as exc:
            why = f"its hparams cannot be stored as JSON ({exc})"
    else:
        try:
            required = [
                p.name
                for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self"
                and p.default is p.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
        except (TypeError, ValueError):
            required = ["?"]
        if required:
            why = f"{cls.__qualname__}.__init__ needs {', '.join(required)}; pass init_args="
        else:
            out["init_args"] = {}
    if why is None and not _nested_classes(out["init_args"]):
        args = out["init_args"]
        if out["lightning"]:
            args = _lightning_args(cls, args)
        why = rebuild_problem(model, out, lambda: cls(**args))
    if why is not None:
        out["init_args"] = None
        out["why_not"] = why
    return out


def _script_of(cls: type) -> str | None:
    """The module name of the script a class was defined in when it ran as ``__main__``
    (``python train.py`` gives ``train``), so that loading can find it once imported."""
    if cls.__module__ != "__main__":
        return None
    file = getattr(sys.modules.get("__main__"), "__file__", None)
    stem = Path(file).stem if isinstance(file, str) else ""
    return stem if _IDENTIFIER.fullmatch(stem) else None


def structure(model: torch.nn.Module) -> list[Any]:
    """What a rebuilt model must match: each submodule's name, class and settings, and each
    weight's name and shape."""
    modules = [(n, type(m).__qualname__, m.extra_repr()) for n, m in model.named_modules()]
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    return [modules, shapes]


_CHECKED: dict[tuple[Any, ...], str | None] = {}


def rebuild_problem(model: torch.nn.Module, rec: dict[str, Any], build: Any) -> str | None:
    """Why ``build()`` (a model from the recipe ``rec``) does not give ``model`` back, or
    None when it does (or when building fails here for reasons of this machine, which are
    not the recipe's fault). Built on the meta device, with the RNG state kept as it was;
    remembered per model structure and recipe."""
    try:
        key: tuple[Any, ...] = (
            type(model),
            json.dumps(rec, sort_keys=True, default=str),
            json.dumps(structure(model), default=str),
        )
    except (TypeError, ValueError):
        return None
    if key in _CHECKED:
        return _CHECKED[key]
    problem = None
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            rebuilt = build()
    except TypeError as exc:
        problem = f"{type(model).__qualname__} cannot be built from them ({str(exc)[:150]})"
    except UnsupportedModelError as exc:
        problem = str(exc)[:200]
    except Exception:
        return None  # e.g. a download the constructor needs; loading will say what fails
    else:
        problem = _mismatch(model, rebuilt)
    _CHECKED[key] = problem
    return problem


def _mismatch(model: torch.nn.Module, rebuilt: torch.nn.Module) -> str | None:
    if structure(model) == structure(rebuilt):
        return None
    mine, theirs = model.state_dict(), rebuilt.state_dict()
    cls = type(model).__qualname__
    if set(mine) == set(theirs) and all(mine[k].shape == theirs[k].shape for k in mine):
        return f"{cls} built from the recorded arguments differs in its layers' settings"
    return (
        f"{cls} built from the recorded arguments has {len(set(mine) & set(theirs))} of its "
        f"{len(mine)} weights (layers added after construction?)"
    )


def _nested_classes(init_args: Any) -> list[str]:
    """The ``class_path`` values inside ``init_args`` (LightningCLI's nested modules)."""
    found: list[str] = []
    if isinstance(init_args, dict):
        path = init_args.get("class_path")
        if isinstance(path, str):
            found.append(path)
        for value in init_args.values():
            found.extend(_nested_classes(value))
    elif isinstance(init_args, list):
        for value in init_args:
            found.extend(_nested_classes(value))
    return found


def describe(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}),
        "tensors": len(tensors),
    }
    example = getattr(model, "example_input_array", None)
    if isinstance(example, torch.Tensor):
        info["input_shape"] = list(example.shape)
    return info


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def recorded_class(rec: dict[str, Any], ref: str, *, trust_recipe: bool) -> type[torch.nn.Module]:
    """The ``torch.nn.Module`` subclass a recipe names, found without trusting the shelf.

    A recipe is data from the shelf, which may be someone else's: nothing it names is imported
    unless ``trust_recipe`` (the module must be imported already, by the caller's own code),
    and nothing but a ``torch.nn.Module`` subclass is ever called.
    """
    path = rec.get("class")
    module_name, _, qualname = path.partition(":") if isinstance(path, str) else ("", "", "")
    parts = qualname.split(".")
    if not all(_IDENTIFIER.fullmatch(p) for p in [*module_name.split("."), *parts]):
        raise UnsupportedModelError(
            f"{ref} records a malformed class {path!r}; pass model=MyModel(...) to load into."
        )
    module = sys.modules.get(module_name)
    if module is None and trust_recipe:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnsupportedModelError(
                f"{ref} was logged from {path!r}, whose module cannot be imported here ({exc}). "
                "Pass model=MyModel(...) to load into."
            ) from None
    if module is None:
        raise UnsupportedModelError(
            f"{ref} was logged from {path!r}. modelshelf imports no module that a shelf names: "
            f"import {module_name} first (your own code that defines the class), pass "
            "trust_recipe=True if you trust who logged it, or pass model=MyModel(...)."
        )
    obj = _module_class(module, parts)
    if obj is None and module_name == "__main__":
        obj = _script_class(rec, qualname, ref)
        if obj is None and not isinstance(rec.get("script"), str):
            raise UnsupportedModelError(
                f"{ref} was logged from the class {qualname} defined in a notebook (or an "
                f"interactive session), which is not defined here. Run the cell that defines "
                f"{qualname} first, or pass the model to load into: "
                f"load_model({ref!r}, model={qualname}(...))."
            )
    if obj is None:
        raise UnsupportedModelError(
            f"{ref} records {path!r} as its class, which is not a torch.nn.Module subclass "
            "here; modelshelf calls nothing else. Pass model=MyModel(...) to load into."
        )
    return obj


def _module_class(module: Any, parts: list[str]) -> type[torch.nn.Module] | None:
    obj: Any = module
    for part in parts:
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) and issubclass(obj, torch.nn.Module) else None


def _script_class(rec: dict[str, Any], qualname: str, ref: str) -> type[torch.nn.Module] | None:
    """A class logged from a script run as ``__main__`` (``python train.py``), found in that
    script imported as a module by the caller's code (``import train``), never imported here."""
    script = rec.get("script")
    if not (isinstance(script, str) and _IDENTIFIER.fullmatch(script)):
        return None
    module = sys.modules.get(script)
    if module is None:
        raise UnsupportedModelError(
            f"{ref} was logged from the class {qualname} of the script {script}.py, run as "
            f"__main__: import {script} first (modelshelf imports nothing a shelf names), or "
            "pass model=MyModel(...)."
        )
    found = _module_class(module, qualname.split("."))
    return found if found is not None and found.__module__ == script else None


def rebuild(
    rec: dict[str, Any],
    ref: str,
    *,
    trust_recipe: bool = False,
    meta: bool = False,
    trusted_class: type[torch.nn.Module] | None = None,
) -> torch.nn.Module:
    """Construct the recorded class with its recorded init arguments (or, for a ``builder``
    recipe, call the fastai factory it names).

    With ``meta=True`` the parameters are created on the meta device: no memory, no random
    initialisation, as the loaded weights replace them all anyway. ``trusted_class``: the
    class itself (checking a recipe at save time), instead of looking up the recorded one.
    """
    if meta:
        with torch.device("meta"):
            return rebuild(rec, ref, trust_recipe=trust_recipe, trusted_class=trusted_class)
    if rec.get("builder") is not None:
        from .fastai_recipes import build

        return build(rec, ref, trust_recipe=trust_recipe)
    init_args = rec.get("init_args")
    if init_args is None:
        raise UnsupportedModelError(
            f"{ref} cannot be rebuilt: {str(rec.get('why_not') or 'no init arguments')[:160]}. "
            f"Pass model=: load_model({ref!r}, model=MyModel(...))."
        )
    if not isinstance(init_args, dict):
        raise UnsupportedModelError(
            f"{ref} records init arguments that are not a mapping; pass model=MyModel(...)."
        )
    cls = trusted_class or recorded_class(rec, ref, trust_recipe=trust_recipe)
    shown = str(rec.get("class"))[:80]
    if rec.get("lightning"):
        init_args = _lightning_args(cls, init_args)
        nested = _nested_classes(init_args)
        if nested:
            return _cli_instantiate(cls, init_args, nested, ref, trust_recipe=trust_recipe)
    try:
        return cls(**init_args)
    except TypeError as exc:
        raise UnsupportedModelError(
            f"{ref}: {shown}(**recorded init_args) failed ({str(exc)[:100]}). "
            "Pass model=MyModel(...) to load into."
        ) from None


def _lightning_args(cls: type, init_args: dict[str, Any]) -> dict[str, Any]:
    """The hparams that ``cls`` takes, as Lightning's ``load_from_checkpoint`` picks them:
    LightningCLI's own keys dropped, and unknown ones too unless ``__init__`` takes
    ``**kwargs``."""
    args = {k: v for k, v in init_args.items() if k not in _CLI_KEYS}
    try:
        params = inspect.signature(cls.__init__).parameters.values()  # type: ignore[misc]
    except (TypeError, ValueError):
        return args
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return args
    names = {p.name for p in params}
    return {k: v for k, v in args.items() if k in names}


def _cli_instantiate(
    cls: type, init_args: dict[str, Any], nested: list[str], ref: str, *, trust_recipe: bool
) -> torch.nn.Module:
    """A LightningCLI module whose hparams configure nested classes (``class_path``): built
    by Lightning's own ``instantiate_module`` (jsonargparse), which imports those classes;
    so each must be imported already, or the recipe trusted."""
    for path in nested:
        module_name, _, attr = path.rpartition(".")
        owner = sys.modules.get(module_name)
        if not trust_recipe and not isinstance(getattr(owner, attr, None), type):
            raise UnsupportedModelError(
                f"{ref} configures {path[:80]!r}; import its module first, pass "
                "trust_recipe=True if you trust who logged it, or pass model=MyModel(...)."
            )
    old = any(base.__module__.startswith("pytorch_lightning") for base in cls.__mro__)
    cli = importlib.import_module("pytorch_lightning.cli" if old else "lightning.pytorch.cli")
    try:
        return cli.instantiate_module(cls, init_args)  # type: ignore[no-any-return]
    except Exception as exc:
        raise UnsupportedModelError(
            f"{ref}: LightningCLI could not build {cls.__qualname__} from its hparams "
            f"({type(exc).__name__}: {str(exc)[:100]}). Pass model=MyModel(...)."
        ) from None


def _on_meta(model: torch.nn.Module) -> bool:
    tensors = [*model.parameters(), *model.buffers()]
    return any(t.is_meta for t in tensors)


def load_trusted_pickle(path: Path, map_location: Any) -> Any:
    """``torch.load`` a file the caller trusts (``allow_pickle=True``): ``weights_only``
    first, fully only if that refuses an object."""
    # A file object, not the path: torch.load hands a "*.safetensors" path to safetensors.
    with open(path, "rb") as f:
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            f.seek(0)
            return torch.load(f, map_location=map_location, weights_only=False)


def map_private(path: Path, size: int) -> Any:
    """The first ``size`` bytes of the file at ``path``, mapped privately (copy-on-write: a
    write to a tensor made from it never reaches the file), as a writable uint8 array.

    PyTorch's map closes its file descriptor once mapped, where Python's ``mmap`` keeps a
    duplicate for as long as the map lives: a model of thousands of chunks would otherwise
    hold as many descriptors for as long as its tensors live. The map is released with the
    last tensor that views it.
    """
    storage = torch.UntypedStorage.from_file(str(path), shared=False, nbytes=size)
    return torch.empty(0, dtype=torch.uint8).set_(cast(torch.UntypedStorage, storage)).numpy()


def state_from_chunks(chunks: list[Any]) -> dict[str, torch.Tensor] | None:
    """The tensors of a safetensors file held as ``chunks`` (its bytes cut on tensor
    boundaries: writable buffers, memory maps or bytearrays), each a view of its chunk's
    memory: nothing is copied.

    None when the layout is not one read here: an unknown dtype, a tensor across chunks, or a
    header that does not describe the bytes exactly. The file is then assembled and read by
    safetensors, which says what is wrong with it.
    """
    found = first_chunk_header(chunks)
    if found is None:
        return None
    header, data_start = found
    starts, at = [], 0
    for c in chunks:
        starts.append(at)
        at += len(c)
    state: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensor = _tensor_in(chunks, starts, data_start, info)
        if tensor is None:
            return None
        state[name] = tensor
    return state


def _tensor_in(
    chunks: list[Any], starts: list[int], data_start: int, info: Any
) -> torch.Tensor | None:
    """One tensor of a chunked safetensors file, from the chunk that holds it."""
    if not isinstance(info, dict) or info.get("dtype") not in _TORCH_DTYPES:
        return None
    dtype, shape, offsets = (
        _TORCH_DTYPES[info["dtype"]],
        info.get("shape"),
        info.get("data_offsets"),
    )
    if not (
        isinstance(shape, list)
        and all(type(d) is int and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(o) is int for o in offsets)
    ):
        return None
    numel, size, itemsize = math.prod(shape), offsets[1] - offsets[0], dtype.itemsize
    if offsets[0] < 0 or size != numel * itemsize:
        return None
    begin = data_start + offsets[0]
    i = bisect.bisect_right(starts, begin) - 1
    offset = begin - starts[i]
    if offset + size > len(chunks[i]):
        return None  # across two chunks: not how modelshelf cuts
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    if offset % itemsize:  # a misaligned view would be slow or refused: copy this one
        return torch.frombuffer(bytearray(chunks[i][offset : offset + size]), dtype=dtype).reshape(
            shape
        )
    return torch.frombuffer(chunks[i], dtype=dtype, count=numel, offset=offset).reshape(shape)


def read_state(path: Path, device: str | int, ref: str, *, allow_pickle: bool) -> dict[str, Any]:
    """The tensors of a weights file: safetensors, or (only with ``allow_pickle``) a pickle.

    A file is told by its bytes, not its name: a "model.safetensors" that is a pickle is
    refused with UnsafeLoadError, and one that is neither is damage (IntegrityError).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    shown = f"{ref}/{path.name}"
    kind = pickle_kind(path)
    if kind is not None:
        if not allow_pickle:
            raise refuse(path, shown, kind)
        state = load_trusted_pickle(path, torch.device(device))
        if not isinstance(state, dict):
            raise UnsupportedModelError(f"{shown} holds a {type(state).__name__}, not weights.")
        return state
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as exc:
        raise IntegrityError(
            f"{shown} is not a readable safetensors file ({exc}); the shelf may be damaged.",
            ref=ref,
            files=[path.name],
        ) from None


def load_weights(
    weights: Path | dict[str, Any],
    aliases: dict[str, str],
    model: torch.nn.Module,
    map_location: Any,
    ref: str,
    *,
    allow_pickle: bool = False,
) -> torch.nn.Module:
    """Load the weights (a file, or tensors already read) into ``model`` (strictly); return
    it in eval mode.

    A model built on the meta device takes the loaded tensors as its own (no copy), and its
    tied weights are tied again.
    """
    device = str(map_location) if isinstance(map_location, torch.device) else map_location
    if not isinstance(device, (str, int)):
        raise InvalidArgumentError(
            f"map_location={map_location!r}: give a device such as 'cpu', 'cuda:0' or torch.device."
        )
    if isinstance(weights, dict):
        state = dict(weights)
    else:
        state = read_state(weights, device, ref, allow_pickle=allow_pickle)
    for alias, canonical in aliases.items():
        state[alias] = state[canonical]
    assign = _on_meta(model)
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError:
        raise UnsupportedModelError(_misfit(ref, model, state)) from None
    if assign:
        for alias, canonical in aliases.items():
            owner, _, attr = alias.rpartition(".")
            target = model.get_submodule(owner) if owner else model
            setattr(target, attr, model.get_parameter(canonical))
        if _on_meta(model):
            raise _StillOnMeta
    model.to(torch.device(device) if isinstance(device, str) else device)
    return model.eval()


def _misfit(ref: str, model: torch.nn.Module, state: dict[str, Any]) -> str:
    """A short account of how the stored weights differ from ``model``'s (under 300
    characters, however many weights there are)."""
    expected = model.state_dict()
    lacking = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    shapes = [
        k for k in expected
        if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)
    ]  # fmt: skip
    parts = [
        f"{len(keys)} {what} (e.g. {keys[0][:40]!r})"
        for keys, what in ((lacking, "missing"), (extra, "unexpected"), (shapes, "of other shapes"))
        if keys
    ]
    return (
        f"{ref} does not fit {type(model).__qualname__[:60]}: weights {', '.join(parts)}. "
        f"Pass the model it was trained as: load_model({ref[:60]!r}, model=...)."
    )


class _StillOnMeta(Exception):
    """The module made tensors that are not in its state_dict: build it for real instead."""


def rebuild_and_load(
    rec: dict[str, Any],
    path: Path | dict[str, Any],
    aliases: dict[str, str],
    map_location: Any,
    ref: str,
    *,
    trust_recipe: bool = False,
    allow_pickle: bool = False,
) -> torch.nn.Module:
    """The recorded model rebuilt (on the meta device when it can be) with the weights."""
    try:
        model = rebuild(rec, ref, trust_recipe=trust_recipe, meta=True)
        return load_weights(path, aliases, model, map_location, ref, allow_pickle=allow_pickle)
    except _StillOnMeta:
        model = rebuild(rec, ref, trust_recipe=trust_recipe)
        return load_weights(path, aliases, model, map_location, ref, allow_pickle=allow_pickle)
