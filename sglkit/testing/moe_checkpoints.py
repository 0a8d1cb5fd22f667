"""Test fixtures: the on-disk layout of tiny mixture-of-experts checkpoints (make_tiny_model -> safetensors names).

HF transformers 5 keeps an MoE model's experts stacked in memory (``mlp.experts.gate_up_proj`` [E, 2I, H] = every
expert's gate rows then up rows, ``mlp.experts.down_proj`` [E, H, I]; Mixtral's block renamed ``mlp``) and
converts on load / save. Checkpoints on the Hub, and HF's own ``save_pretrained``, store one tensor per expert:

==========================  ==============================================================================
architecture                on disk, per layer
==========================  ==============================================================================
MixtralForCausalLM          ``block_sparse_moe.gate`` [E, H], ``block_sparse_moe.experts.{e}.w1 / w3`` [I, H]
                            (gate / up), ``.w2`` [H, I] (down)
Qwen2MoeForCausalLM         ``mlp.gate``, ``mlp.experts.{e}.gate_proj / up_proj / down_proj``, and
                            ``mlp.shared_expert.*``, ``mlp.shared_expert_gate`` [1, H]
Qwen3MoeForCausalLM         ``mlp.gate``, ``mlp.experts.{e}.gate_proj / up_proj / down_proj``
==========================  ==============================================================================

``checkpoint_shapes`` turns the names and shapes of a meta HF model's ``state_dict`` into that layout, so the tiny
writer stores what users download; ``moe_config_defaults`` gives the tiny configs a few small experts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MOE_CHECKPOINT_NAMES", "checkpoint_shapes", "moe_config_defaults"]

# Architecture -> (block name on disk, expert gate / up / down module names on disk).
MOE_CHECKPOINT_NAMES: dict[str, tuple[str, tuple[str, str, str]]] = {
    "MixtralForCausalLM": ("block_sparse_moe", ("w1", "w3", "w2")),
    "Qwen2MoeForCausalLM": ("mlp", ("gate_proj", "up_proj", "down_proj")),
    "Qwen3MoeForCausalLM": ("mlp", ("gate_proj", "up_proj", "down_proj")),
}
GATE_UP, DOWN = ".mlp.experts.gate_up_proj", ".mlp.experts.down_proj"  # HF 5 in-memory suffixes


def checkpoint_shapes(architecture: str, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """HF 5 in-memory parameter names -> shapes, rewritten to the per-expert on-disk layout (others unchanged).

    ``...mlp.experts.gate_up_proj`` (E, 2I, H) becomes E gate and E up tensors (I, H); ``...mlp.experts.down_proj``
    (E, H, I) becomes E down tensors (H, I); Mixtral's ``mlp.gate`` becomes ``block_sparse_moe.gate``.
    """
    if architecture not in MOE_CHECKPOINT_NAMES:
        return shapes
    block, (gate, up, down) = MOE_CHECKPOINT_NAMES[architecture]
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if name.endswith(GATE_UP):
            prefix = name[: -len(GATE_UP)] + f".{block}.experts"
            num_experts, rows, hidden = shape
            for e in range(num_experts):
                out[f"{prefix}.{e}.{gate}.weight"] = (rows // 2, hidden)
                out[f"{prefix}.{e}.{up}.weight"] = (rows // 2, hidden)
        elif name.endswith(DOWN):
            prefix = name[: -len(DOWN)] + f".{block}.experts"
            num_experts, hidden, inter = shape
            for e in range(num_experts):
                out[f"{prefix}.{e}.{down}.weight"] = (hidden, inter)
        elif name.endswith(".mlp.gate.weight"):
            out[name[: -len(".mlp.gate.weight")] + f".{block}.gate.weight"] = shape
        else:
            out[name] = shape
    return out


def moe_config_defaults(architecture: str, kwargs: dict[str, Any]) -> None:
    """Fill ``kwargs`` (tiny config arguments) with small expert sizes unless given: 4 (Mixtral) or 8 (Qwen)
    experts, 2 per token, Qwen's experts at half and its shared expert at the full ``intermediate_size``.
    ``mlp_only_layers`` may be given as a tuple (hashable, for fixture caches); the config gets a list."""
    if architecture not in MOE_CHECKPOINT_NAMES:
        return
    if isinstance(kwargs.get("mlp_only_layers"), tuple):
        kwargs["mlp_only_layers"] = list(kwargs["mlp_only_layers"])
    kwargs.setdefault("num_experts_per_tok", 2)
    if architecture == "MixtralForCausalLM":
        kwargs.setdefault("num_local_experts", 4)
        return
    kwargs.setdefault("num_experts", 8)
    kwargs.setdefault("moe_intermediate_size", kwargs["intermediate_size"] // 2)
    if architecture == "Qwen2MoeForCausalLM":
        kwargs.pop("head_dim", None)  # hidden_size // num_attention_heads, as Qwen2
        kwargs.setdefault("shared_expert_intermediate_size", kwargs["intermediate_size"])
    else:
        kwargs.setdefault("norm_topk_prob", True)  # as the released Qwen3-MoE checkpoints
