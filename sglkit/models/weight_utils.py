"""Models: the one checkpoint-loading loop (checkpoint tensors -> name map -> each parameter's weight_loader).

A model's ``load_weights`` is a short table handed to ``load_weights`` here::

    STACKED_PARAMS = [("qkv_proj", "q_proj", "q"), ("qkv_proj", "k_proj", "k"), ("qkv_proj", "v_proj", "v"),
                      ("gate_up_proj", "gate_proj", 0), ("gate_up_proj", "up_proj", 1)]

Each entry reads "checkpoint module ``q_proj`` is shard ``"q"`` of our fused module ``qkv_proj``"; names match
whole dotted components (``...self_attn.q_proj.weight`` -> ``...self_attn.qkv_proj.weight``, shard "q"). A
name matching no entry loads as is, so our own state_dict (already fused) loads too, each fused tensor counting
for all its shards. A checkpoint part may span several components and hold one ``*``, which matches an integer
component (an expert id): ``("w13_weight", "*.w1.weight", "w1")`` maps ``...experts.3.w1.weight`` to
``...experts.w13_weight``, shard ``(3, "w1")``; such a parameter expects one shard per index along its dim 0.
The parameter's ``weight_loader(param, tensor, shard_id)`` (attached by its layer) does the
copy; parameters without one (``nn.LayerNorm``, ``nn.Embedding``) get a strict whole-tensor copy.

Errors: ValueError naming a checkpoint tensor the model has no parameter for; ValueError listing every
parameter (or shard of a fused one, ``qkv_proj.weight[k]``) the checkpoint never provided; a tensor of another
shape raises torch's size message (no broadcasting), with a note naming the tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence

import torch
from torch import nn

from sglkit.layers.weight_loader import WeightLoader, default_weight_loader

__all__ = ["StackedParam", "load_weights", "expected_shards"]

# (our fused module name, checkpoint module name, shard id)
StackedParam = tuple[str, str, Hashable]
MAX_LISTED_MISSING = 8
INDEX_WILDCARD = "*"  # in a checkpoint part: one integer component, the index along dim 0 of our parameter


def _replace_components(name: str, old: str, new: str) -> tuple[str, int | None] | None:
    """``name`` with its first run of dotted components matching ``old`` replaced by ``new``, and the integer a
    ``*`` in ``old`` matched (None without one); None if no run matches."""
    parts, pattern = name.split("."), old.split(".")
    width = len(pattern)
    for start in range(len(parts) - width + 1):
        window = parts[start : start + width]
        pairs = list(zip(pattern, window, strict=True))
        if all(p == w or (p == INDEX_WILDCARD and w.isdigit()) for p, w in pairs):
            index = next((int(w) for p, w in pairs if p == INDEX_WILDCARD), None)
            return ".".join(parts[:start] + [new] + parts[start + width :]), index
    return None


def _resolve(name: str, stacked_params: Sequence[StackedParam]) -> tuple[str, Hashable | None]:
    """Checkpoint name -> (our parameter name, shard id or None); ``(index, shard id)`` for a ``*`` part."""
    for fused, part, shard_id in stacked_params:
        match = _replace_components(name, part, fused)
        if match is not None:
            target, index = match
            return target, shard_id if index is None else (index, shard_id)
    return name, None


def _shards_of(
    param_name: str, param: torch.Tensor, stacked_params: Sequence[StackedParam]
) -> list[tuple[str, Hashable | None]]:
    """The (name, shard id) pairs one parameter must receive: one per shard if fused (per index along dim 0 for a
    ``*`` part), else (name, None)."""
    components = param_name.split(".")
    shards: list[Hashable] = []
    for fused, part, sid in stacked_params:
        if fused in components:
            indexed = INDEX_WILDCARD in part.split(".")
            shards += [(i, sid) for i in range(param.shape[0])] if indexed else [sid]
    return [(param_name, sid) for sid in shards or [None]]


def expected_shards(
    model: nn.Module, stacked_params: Sequence[StackedParam] = ()
) -> set[tuple[str, Hashable | None]]:
    """Every (parameter name, shard id or None) that a full checkpoint must provide."""
    return {pair for name, p in model.named_parameters() for pair in _shards_of(name, p, stacked_params)}


def _find_weight_loader(model: nn.Module, param_name: str, param: nn.Parameter) -> WeightLoader:
    """``param.weight_loader``; else its module's ``weight_loader`` method (attributes set on a parameter do not
    survive ``Module.to_empty``); else the strict whole-tensor copy."""
    loader = getattr(param, "weight_loader", None)
    if loader is None:
        module = model.get_submodule(param_name.rpartition(".")[0])
        loader = getattr(module, "weight_loader", None)
    return loader if callable(loader) else default_weight_loader


def _describe(model: nn.Module) -> str:
    """Class name, with the sizes of its config when it has one (for error messages)."""
    config = getattr(model, "model_config", None)
    if config is None:
        return type(model).__name__
    return (
        f"{type(model).__name__} (hidden_size={config.hidden_size}, "
        f"num_hidden_layers={config.num_hidden_layers})"
    )


def _add_note(error: BaseException, note: str) -> None:
    """Attach ``note`` to the traceback without changing ``str(error)`` (Python >= 3.11)."""
    if hasattr(error, "add_note"):
        error.add_note(note)


def load_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    stacked_params: Sequence[StackedParam] = (),
    *,
    rename: Callable[[str], str | None] | None = None,
) -> set[str]:
    """Copy checkpoint tensors into ``model``'s parameters through their weight loaders; the names loaded.

    ``rename`` maps a checkpoint name to the model's naming before the table applies (None: skip the tensor,
    e.g. a tied ``lm_head.weight`` or a rotary buffer). Raises ValueError for a tensor with no parameter and
    for parameters / shards never provided; a size mismatch raises torch's RuntimeError.
    """
    params = dict(model.named_parameters())
    loaded: set[tuple[str, Hashable | None]] = set()
    for name, tensor in weights:
        mapped = rename(name) if rename is not None else name
        if mapped is None:
            continue
        param_name, shard_id = _resolve(mapped, stacked_params)
        param = params.get(param_name)
        if param is None:
            raise ValueError(f"Unexpected weight {name!r} in checkpoint for {_describe(model)}.")
        loader = _find_weight_loader(model, param_name, param)
        try:
            if shard_id is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard_id)
        except (RuntimeError, ValueError) as e:
            _add_note(e, f"while loading checkpoint tensor {name!r} into {param_name}")
            raise
        if shard_id is None:  # a plain tensor, or a whole fused one: every shard of the parameter
            loaded.update(_shards_of(param_name, param, stacked_params))
        else:
            loaded.add((param_name, shard_id))
    missing = sorted(
        f"{n}[{s}]" if s is not None else n for n, s in expected_shards(model, stacked_params) - loaded
    )
    if missing:
        shown = ", ".join(missing[:MAX_LISTED_MISSING])
        if len(missing) > MAX_LISTED_MISSING:
            shown += f", ... ({len(missing)} in all)"
        raise ValueError(f"Checkpoint did not provide these parameters of {type(model).__name__}: {shown}.")
    return {name for name, _ in loaded}
