"""Rebuild recipes for the models fastai's learner factories build.

``vision_learner`` and ``tabular_learner`` build an ``nn.Sequential`` or a ``TabularModel``
from arguments that the model alone does not record. Their recipe is the factory's arguments,
read off the Learner (``learn.arch``, which ``vision_learner`` keeps) and its model (sizes,
pooling, dropout, output range), and checked at save time by building one on the meta device
(``torch_format.rebuild_problem``): a learner built with a custom head or other settings that
these arguments do not capture gets no recipe, and a warning that says ``load_model`` will
need ``model=``.

A recipe is data from the shelf. Loading validates every argument's type and size, builds with
``pretrained=False`` (the stored weights replace all of them; nothing is downloaded), and calls
an architecture only from the model zoos fastai builds on (torchvision, fastai's own, timm by
name) unless ``trust_recipe=True``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from torch import nn

from .._deps import require
from .._errors import UnsupportedModelError

VISION = "fastai.vision_learner"
TABULAR = "fastai.tabular_learner"
#: where an architecture may come from without trust_recipe
ZOOS = ("torchvision.models", "fastai.vision.models")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def learner_recipe(learn: Any) -> dict[str, Any] | None:
    """The factory recipe of ``learn``'s model, or None when it was not built by a factory
    this module knows (the class recipe of ``torch_format`` applies then)."""
    from .torch_format import rebuild_problem

    model = learn.model
    try:
        if getattr(learn, "arch", None) is not None and isinstance(model, nn.Sequential):
            rec = _vision_recipe(learn.arch, model)
        elif _is_tabular(model):
            rec = _tabular_recipe(model)
        else:
            return None
    except (AttributeError, IndexError, TypeError, ValueError):
        return None  # not shaped as the factory builds it
    problem = rebuild_problem(model, rec, lambda: build(rec, "", trust_recipe=True))
    return rec if problem is None else None


def _is_tabular(model: Any) -> bool:
    cls = type(model)
    return cls.__name__ == "TabularModel" and cls.__module__.startswith("fastai.tabular")


def _sigmoid_range(model: Any) -> list[float] | None:
    found = [m for m in model.modules() if type(m).__name__ == "SigmoidRange"]
    return [float(found[-1].low), float(found[-1].high)] if found else None


def _vision_recipe(arch: Any, model: Any) -> dict[str, Any]:
    body, head = model[0], model[1]
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    conv = next(m for m in body.modules() if isinstance(m, nn.Conv2d))
    arch_path: Any = (
        {"timm": arch} if isinstance(arch, str) else f"{arch.__module__}:{arch.__qualname__}"
    )
    return {
        "builder": VISION,
        "arch": arch_path,
        "args": {
            "n_out": linears[-1].out_features,
            "n_in": conv.in_channels,
            "lin_ftrs": [m.out_features for m in linears[:-1]],
            "ps": [float(m.p) for m in head.modules() if isinstance(m, nn.Dropout)],
            "concat_pool": any(type(m).__name__ == "AdaptiveConcatPool2d" for m in head.modules()),
            "y_range": _sigmoid_range(head),
        },
    }


def _tabular_recipe(model: Any) -> dict[str, Any]:
    linears = [m for m in model.layers.modules() if isinstance(m, nn.Linear)]
    blocks = list(model.layers.children())
    first = list(blocks[0].children())
    hidden_bn = any(isinstance(m, nn.BatchNorm1d) for m in first)
    ps = [float(m.p) for m in model.layers.modules() if isinstance(m, nn.Dropout)]
    return {
        "builder": TABULAR,
        "args": {
            "emb_szs": [[e.num_embeddings, e.embedding_dim] for e in model.embeds],
            "n_cont": int(model.n_cont),
            "out_sz": linears[-1].out_features,
            "layers": [m.out_features for m in linears[:-1]],
            "ps": ps if len(ps) == len(linears) - 1 else [],  # else none: all zero
            "y_range": _sigmoid_range(model),
            "use_bn": hidden_bn if len(linears) > 1 else True,
            "bn_final": any(
                isinstance(m, nn.BatchNorm1d) for m in blocks[len(linears) - 1].children()
            ),
            "bn_cont": model.bn_cont is not None,
            "lin_first": isinstance(first[0], nn.Linear),
        },
    }


# -- building from a recipe read from a shelf ------------------------------------------------
def _bad(ref: str, what: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{ref} records a fastai recipe with {what}; pass model=MyModel(...) to load into."
    )


def _int(value: Any, ref: str, what: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 10**7:
        raise _bad(ref, f"an odd {what} ({str(value)[:40]!r})")
    return value


def _ints(value: Any, ref: str, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) > 256:
        raise _bad(ref, f"an odd {what}")
    return [_int(v, ref, what, 1) for v in value]


def _floats(value: Any, ref: str, what: str) -> list[float]:
    ok = isinstance(value, list) and len(value) <= 256
    if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _bad(ref, f"an odd {what}")
    return [float(v) for v in value]


def _y_range(value: Any, ref: str) -> tuple[float, float] | None:
    if value is None:
        return None
    pair = _floats(value, ref, "y_range")
    if len(pair) != 2:
        raise _bad(ref, "an odd y_range")
    return pair[0], pair[1]


def _arch(rec: dict[str, Any], ref: str, trust_recipe: bool) -> Any:
    """The architecture a vision recipe names: a timm model name (timm's own registry), or a
    function of a model zoo; another module's only with ``trust_recipe``."""
    arch = rec.get("arch")
    if isinstance(arch, dict) and isinstance(arch.get("timm"), str):
        name = arch["timm"]
        if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,100}", name):
            raise _bad(ref, "an odd timm architecture name")
        return name
    if not isinstance(arch, str):
        raise _bad(ref, "no architecture")
    module_name, _, qualname = arch.partition(":")
    parts = [*module_name.split("."), *qualname.split(".")]
    if not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise _bad(ref, "a malformed architecture")
    zoo = any(module_name == z or module_name.startswith(z + ".") for z in ZOOS)
    if not zoo and not trust_recipe:
        raise UnsupportedModelError(
            f"{ref} was built from the architecture {arch[:80]!r}, outside the model zoos "
            "modelshelf calls on its own; pass trust_recipe=True if you trust who logged it, "
            "or pass model=MyModel(...)."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnsupportedModelError(
            f"{ref} needs {module_name!r}, which cannot be imported here ({exc}). "
            "Pass model=MyModel(...)."
        ) from None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise _bad(ref, f"an architecture that is not a function here ({arch[:80]!r})")
    return obj


def build(rec: dict[str, Any], ref: str, *, trust_recipe: bool) -> nn.Module:
    """The model a fastai factory recipe describes, freshly initialised."""
    require("fastai", "Rebuilding a fastai model")
    try:
        return _build(rec, ref, trust_recipe=trust_recipe)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # the factory refused what the recipe gave it
        raise UnsupportedModelError(
            f"{ref}: fastai could not build its model from the recorded recipe "
            f"({type(exc).__name__}: {str(exc)[:100]}). Pass model=MyModel(...)."
        ) from None


def _build(rec: dict[str, Any], ref: str, *, trust_recipe: bool) -> nn.Module:
    args = rec.get("args")
    if not isinstance(args, dict):
        raise _bad(ref, "no arguments")
    if rec.get("builder") == VISION:
        from fastai.vision.learner import create_timm_model, create_vision_model

        arch = _arch(rec, ref, trust_recipe)
        kwargs: dict[str, Any] = {
            "n_in": _int(args.get("n_in"), ref, "n_in", 1),
            "lin_ftrs": _ints(args.get("lin_ftrs"), ref, "lin_ftrs"),
            "ps": _floats(args.get("ps"), ref, "ps"),
            "concat_pool": bool(args.get("concat_pool")),
            "y_range": _y_range(args.get("y_range"), ref),
        }
        n_out = _int(args.get("n_out"), ref, "n_out", 1)
        if isinstance(arch, str):
            return create_timm_model(arch, n_out, pretrained=False, **kwargs)[0]  # type: ignore[no-any-return]
        return create_vision_model(arch, n_out, pretrained=False, **kwargs)  # type: ignore[no-any-return]
    if rec.get("builder") == TABULAR:
        from fastai.tabular.model import TabularModel

        sizes = args.get("emb_szs")
        if not isinstance(sizes, list) or len(sizes) > 10_000:
            raise _bad(ref, "odd embedding sizes")
        emb_szs = [tuple(_ints(pair, ref, "embedding size")) for pair in sizes]
        if any(len(pair) != 2 for pair in emb_szs):
            raise _bad(ref, "odd embedding sizes")
        return TabularModel(  # type: ignore[no-any-return]
            emb_szs,
            _int(args.get("n_cont"), ref, "n_cont"),
            _int(args.get("out_sz"), ref, "out_sz", 1),
            _ints(args.get("layers"), ref, "layers"),
            ps=_floats(args.get("ps"), ref, "ps") or None,
            y_range=_y_range(args.get("y_range"), ref),
            use_bn=bool(args.get("use_bn", True)),
            bn_final=bool(args.get("bn_final")),
            bn_cont=bool(args.get("bn_cont", True)),
            lin_first=bool(args.get("lin_first", True)),
        )
    raise _bad(ref, f"an unknown builder ({str(rec.get('builder'))[:40]!r})")
