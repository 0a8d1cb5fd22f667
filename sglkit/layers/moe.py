"""Model layers: the mixture-of-experts MLP (decoder layer -> SparseMoeBlock: router -> top-k -> FusedMoE experts).

``SparseMoeBlock`` replaces a decoder layer's dense MLP in MoE families (Mixtral, Qwen2-MoE, Qwen3-MoE):

1. the router (``gate``, a replicated linear [E, H]) scores every token against the E experts;
2. ``select_experts``: softmax over the experts in float32, the top-k, optionally renormalised to sum to 1;
3. ``FusedMoE``: the experts' weights are stacked (``w13_weight`` [E, 2I, H] = gate rows then up rows,
   ``w2_weight`` [E, H, I]) for a grouped computation. On CPU the T * k (token, expert) pairs are sorted by
   expert and each expert that received tokens runs its gated MLP on its contiguous slice; the outputs are scaled
   by the routing weights and scatter-added back to their tokens. Experts with no tokens are skipped.

Checkpoints store one tensor per expert (``experts.{e}.w1`` gate, ``w3`` up, ``w2`` down, in Mixtral's names);
``FusedMoE.weight_loader`` copies one into its slot of the stack with shard id ``(expert_id, "w1"|"w2"|"w3")``
and also accepts a whole stacked tensor (``shard_id=None``: our own state_dict, HF 5's fused in-memory layout).
With tensor parallelism each rank holds every expert's share of the intermediate dim: rows of the w1 and w3
parts of ``w13_weight``, columns of ``w2_weight`` (as column / row-parallel linears do), so ``FusedMoE`` returns
this rank's partial sum; ``SparseMoeBlock`` all-reduces the block output once (the router is replicated, so every
rank picks the same experts). ``tp_rank`` / ``tp_size`` default to ``sglkit.parallel``'s state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglkit.layers.activation import get_act_and_mul
from sglkit.layers.linear import Linear, divide, resolve_tp
from sglkit.layers.weight_loader import copy_weight, set_weight_loader, shard_tensor
from sglkit.parallel import tensor_model_parallel_all_reduce

__all__ = [
    "EXPERT_SHARD_IDS",
    "FusedMoE",
    "SparseMoeBlock",
    "expert_stacked_params",
    "rename_fused_experts",
    "select_experts",
]

EXPERT_SHARD_IDS = ("w1", "w2", "w3")  # gate, down, up (Mixtral's checkpoint names)
# HF transformers 5 in-memory (state_dict) names of the stacked experts -> ours; same layouts.
HF_FUSED_EXPERT_NAMES = {
    "experts.gate_up_proj": "experts.w13_weight",
    "experts.down_proj": "experts.w2_weight",
}


def expert_stacked_params(gate: str, down: str, up: str) -> tuple[tuple[str, str, str], ...]:
    """Rows of a model's stacked-params table (``sglkit.models.weight_utils``) for per-expert checkpoint tensors.

    ``gate`` / ``down`` / ``up`` are the checkpoint's module names inside ``experts.{e}`` ("w1", "w2", "w3" for
    Mixtral; "gate_proj", "down_proj", "up_proj" for Qwen-MoE); ``*`` matches the expert id, so
    ``experts.3.w1.weight`` loads into ``experts.w13_weight`` with shard id ``(3, "w1")``.
    """
    return (
        ("w13_weight", f"*.{gate}.weight", "w1"),
        ("w2_weight", f"*.{down}.weight", "w2"),
        ("w13_weight", f"*.{up}.weight", "w3"),
    )


def rename_fused_experts(name: str) -> str:
    """HF transformers 5's stacked names (``...experts.gate_up_proj``, ``...experts.down_proj``) -> ours."""
    for hf_name, ours in HF_FUSED_EXPERT_NAMES.items():
        if name == hf_name or name.endswith("." + hf_name):
            return name[: -len(hf_name)] + ours
    return name


def select_experts(
    router_logits: torch.Tensor, top_k: int, renormalize: bool, weights_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """router_logits: [T, E] -> (routing weights [T, k], expert ids [T, k] int64), as HF computes them.

    Softmax in float32 over all E experts, then the top-k probabilities (largest first); ``renormalize`` divides
    them by their sum (in float32). The weights stay float32 unless ``weights_dtype`` is given (Qwen-MoE casts
    them to the router's dtype; Mixtral keeps float32 and scales the expert outputs in float32).
    """
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)  # [T, E]
    weights, ids = torch.topk(probs, top_k, dim=-1)  # [T, k], [T, k]
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if weights_dtype is not None:
        weights = weights.to(weights_dtype)
    return weights, ids


class FusedMoE(nn.Module):
    """E experts' gated MLPs with stacked weights: ``w13_weight`` [E, 2I/tp, H], ``w2_weight`` [E, H, I/tp].

    ``forward(hidden [T, H], topk_weights [T, k], topk_ids [T, k]) -> [T, H]`` = for each token, the sum over its
    k experts e of weight * down_e(act(gate_e(x)) * up_e(x)); with tp_size > 1 this rank's partial sum (its share
    of the intermediate dim), to be all-reduced by the caller.
    """

    def __init__(
        self,
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str = "silu",
        dtype: torch.dtype | None = None,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        super().__init__()
        tp_rank, tp_size = resolve_tp(tp_rank, tp_size)
        self.act_fn = get_act_and_mul(hidden_act)  # first: an unsupported activation fails before allocating
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size  # all ranks
        self.intermediate_size_per_rank = divide(intermediate_size, tp_size)
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        local = self.intermediate_size_per_rank
        self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * local, hidden_size, dtype=dtype))
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, local, dtype=dtype))
        set_weight_loader(self.w13_weight, self.weight_loader)
        set_weight_loader(self.w2_weight, self.weight_loader)

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: tuple[int, str] | None = None
    ) -> None:
        """Copy a checkpoint tensor into the stack (this rank's share of the intermediate dim).

        ``shard_id=(e, "w1")`` / ``(e, "w3")``: expert e's gate / up [I, H] into ``w13_weight[e]``'s first / second
        half; ``(e, "w2")``: its down [H, I] into ``w2_weight[e]``. ``None``: a whole stacked tensor,
        [E, 2I, H] (gate rows then up rows) or [E, H, I].
        """
        local = self.intermediate_size_per_rank
        if shard_id is None:
            if param is self.w13_weight:
                if loaded_weight.dim() != 3 or loaded_weight.shape[1] != 2 * self.intermediate_size:
                    raise ValueError(
                        f"Stacked gate/up tensor of shape {tuple(loaded_weight.shape)} does not have "
                        f"{2 * self.intermediate_size} rows per expert."
                    )
                gate, up = loaded_weight.chunk(2, dim=1)  # [E, I, H] each
                copy_weight(param.data[:, :local], shard_tensor(gate, 1, self.tp_rank, self.tp_size))
                copy_weight(param.data[:, local:], shard_tensor(up, 1, self.tp_rank, self.tp_size))
            else:
                copy_weight(param.data, shard_tensor(loaded_weight, 2, self.tp_rank, self.tp_size))
            return
        expert_id, name = shard_id
        if not 0 <= expert_id < self.num_experts or name not in EXPERT_SHARD_IDS:
            raise ValueError(
                f"{type(self).__name__} has experts 0..{self.num_experts - 1} and shards {EXPERT_SHARD_IDS}; "
                f"got {shard_id!r}."
            )
        if (name == "w2") != (param is self.w2_weight):
            raise ValueError(f"Shard {name!r} does not belong to this parameter.")
        if name == "w2":  # [H, I] -> this rank's columns
            copy_weight(param.data[expert_id], shard_tensor(loaded_weight, 1, self.tp_rank, self.tp_size))
            return
        offset = 0 if name == "w1" else local  # [I, H] -> this rank's rows, into the gate or the up half
        dst = param.data[expert_id].narrow(0, offset, local)
        copy_weight(dst, shard_tensor(loaded_weight, 0, self.tp_rank, self.tp_size))

    def forward(
        self, hidden: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
    ) -> torch.Tensor:
        """hidden: [T, H], topk_weights: [T, k], topk_ids: [T, k] -> [T, H] in hidden's dtype.

        The expert outputs are multiplied by the weights in the weights' dtype (float32 for Mixtral) and cast to
        hidden's dtype before being added up, in expert order, as HF does.
        """
        num_tokens, top_k = topk_ids.shape
        flat_ids = topk_ids.flatten()  # [T*k]
        order = torch.argsort(flat_ids, stable=True)  # [T*k]: (token, slot) pairs grouped by expert
        token_ids = order // top_k  # [T*k]: the token of each sorted pair
        counts = torch.bincount(flat_ids, minlength=self.num_experts).tolist()  # [E]
        x = hidden[token_ids]  # [T*k, H]
        out = torch.empty_like(x)  # [T*k, H]
        start = 0
        for expert_id, count in enumerate(counts):
            if count == 0:
                continue
            end = start + count
            gate_up = F.linear(x[start:end], self.w13_weight[expert_id])  # [n, 2I]
            out[start:end] = F.linear(self.act_fn(gate_up), self.w2_weight[expert_id])  # [n, H]
            start = end
        scaled = out * topk_weights.flatten()[order].unsqueeze(-1)  # [T*k, H], in the promoted dtype
        result = torch.zeros_like(hidden)  # [T, H]
        return result.index_add_(0, token_ids, scaled.to(hidden.dtype))

    def extra_repr(self) -> str:
        """Sizes (intermediate per rank) and tensor-parallel placement, for ``print(model)``."""
        tp = f", tp_rank={self.tp_rank}, tp_size={self.tp_size}" if self.tp_size > 1 else ""
        return (
            f"num_experts={self.num_experts}, hidden_size={self.hidden_size}, "
            f"intermediate_size={self.intermediate_size_per_rank}{tp}"
        )


class SparseMoeBlock(nn.Module):
    """Router + top-k + experts: x [T, H] -> sum over the token's top-k experts of weight * expert(x).

    ``renormalize``: the top-k weights are divided by their sum (Mixtral always; Qwen-MoE per ``norm_topk_prob``).
    ``weights_in_input_dtype``: the routing weights are cast to the input's dtype before scaling (Qwen-MoE).
    """

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        hidden_size: int,
        intermediate_size: int,
        hidden_act: str = "silu",
        renormalize: bool = True,
        weights_in_input_dtype: bool = False,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok={top_k} must be between 1 and the {num_experts} experts.")
        self.top_k = top_k
        self.renormalize = renormalize
        self.weights_in_input_dtype = weights_in_input_dtype
        self.gate = Linear(hidden_size, num_experts, bias=False, dtype=dtype)  # the router, replicated
        self.experts = FusedMoE(num_experts, hidden_size, intermediate_size, hidden_act, dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [T, H] -> [T, H] (the ranks' partial sums all-reduced once)."""
        return tensor_model_parallel_all_reduce(self.forward_partial(hidden))

    def forward_partial(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [T, H] -> this rank's partial block output [T, H] (the whole output at tp_size 1)."""
        router_logits = self.gate(hidden)  # [T, E]
        weights_dtype = router_logits.dtype if self.weights_in_input_dtype else None
        weights, ids = select_experts(router_logits, self.top_k, self.renormalize, weights_dtype)  # [T, k]
        return self.experts(hidden, weights, ids)

    def extra_repr(self) -> str:
        """Routing switches, for ``print(model)``."""
        return f"top_k={self.top_k}, renormalize={self.renormalize}"
