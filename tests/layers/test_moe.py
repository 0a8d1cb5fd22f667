"""Mixture of experts (sglkit/layers/moe.py): the grouped CPU computation equals a dense float64 loop over tokens
and experts (top-1 and top-k, renormalised or not, experts left without tokens), routing matches HF's blocks
bit for bit in bfloat16, and the stacked weights load per expert, whole, and as a fake tensor-parallel rank."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglkit.layers.moe import (
    FusedMoE,
    SparseMoeBlock,
    expert_stacked_params,
    rename_fused_experts,
    select_experts,
)
from sglkit.models.weight_utils import expected_shards, load_weights

H, INTER = 16, 12  # hidden, expert intermediate


def random_block(num_experts: int, top_k: int, renormalize: bool, seed: int = 0, **kwargs) -> SparseMoeBlock:
    gen = torch.Generator().manual_seed(seed)
    block = SparseMoeBlock(num_experts, top_k, H, INTER, renormalize=renormalize, **kwargs)
    for p in block.parameters():
        p.data.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return block


def dense_reference(block: SparseMoeBlock, x: torch.Tensor) -> torch.Tensor:
    """x: [T, H] -> [T, H]: token by token, expert by expert, in float64."""
    gate = block.gate.weight.double()
    w13, w2 = block.experts.w13_weight.double(), block.experts.w2_weight.double()
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t, row in enumerate(x.double()):
        probs = torch.softmax(gate @ row, dim=-1)
        weights, ids = probs.topk(block.top_k)
        if block.renormalize:
            weights = weights / weights.sum()
        for w, e in zip(weights.tolist(), ids.tolist(), strict=True):
            h = w13[e] @ row
            out[t] += w * (w2[e] @ (F.silu(h[:INTER]) * h[INTER:]))
    return out


def tokens(num: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(num, H, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("renormalize", [True, False], ids=["renorm", "no-renorm"])
@pytest.mark.parametrize(("num_experts", "top_k"), [(4, 1), (6, 2), (8, 3)])
@pytest.mark.parametrize("num_tokens", [1, 3, 40])
def test_grouped_experts_match_a_dense_float64_loop(num_experts, top_k, renormalize, num_tokens):
    block = random_block(num_experts, top_k, renormalize)
    x = tokens(num_tokens)
    with torch.no_grad():
        out = block(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), dense_reference(block, x), atol=1e-5, rtol=1e-5)


def test_experts_without_tokens_are_skipped_and_the_rest_still_match():
    block = random_block(8, 2, True)
    x = tokens(2)  # 4 (token, expert) pairs for 8 experts
    _, ids = select_experts(block.gate(x), 2, True)
    counts = torch.bincount(ids.flatten(), minlength=8)
    assert (counts == 0).sum() >= 4  # the case happens
    idle = int((counts == 0).nonzero()[0])
    with torch.no_grad():
        block.experts.w13_weight[idle] = float("nan")  # never read: an unused expert is skipped
        out = block(x)
    torch.testing.assert_close(out.double(), dense_reference(block, x), atol=1e-5, rtol=1e-5)


def test_no_tokens():
    block = random_block(4, 2, True)
    assert block(torch.empty(0, H)).shape == (0, H)


def test_select_experts_softmax_topk_then_renormalise_in_float32():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 0.0, 1.0]], dtype=torch.bfloat16)
    weights, ids = select_experts(logits, 2, renormalize=False)
    probs = torch.softmax(logits.float(), dim=-1)
    assert ids.tolist() == [[3, 2], [0, 3]] and weights.dtype == torch.float32
    torch.testing.assert_close(weights, probs.gather(1, ids))
    renormed, _ = select_experts(logits, 2, renormalize=True)
    torch.testing.assert_close(renormed.sum(-1), torch.ones(2))
    cast, _ = select_experts(logits, 2, renormalize=True, weights_dtype=torch.bfloat16)
    assert cast.dtype == torch.bfloat16 and torch.equal(cast, renormed.to(torch.bfloat16))


def test_bad_top_k_and_activation_raise():
    with pytest.raises(ValueError, match="num_experts_per_tok=5"):
        SparseMoeBlock(4, 5, H, INTER)
    with pytest.raises(ValueError, match="Unsupported hidden_act 'relu2'"):
        FusedMoE(4, H, INTER, hidden_act="relu2")


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_bfloat16_equals_hf_blocks_bit_for_bit(family):
    """Mixtral scales expert outputs by float32 weights, Qwen-MoE by weights cast to bfloat16: both as HF."""
    import transformers

    if family == "mixtral":
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock as HFBlock

        config = transformers.MixtralConfig(hidden_size=H, intermediate_size=INTER, num_local_experts=8)
    else:
        from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock as HFBlock

        config = transformers.Qwen3MoeConfig(
            hidden_size=H, moe_intermediate_size=INTER, num_experts=8, norm_topk_prob=True
        )
    config.num_experts_per_tok = 2
    hf = HFBlock(config).to(torch.bfloat16)
    if not hasattr(hf.experts, "gate_up_proj"):
        pytest.skip("this transformers keeps one module per expert")
    gen = torch.Generator().manual_seed(0)
    for p in hf.parameters():
        p.data.copy_(0.5 * torch.randn(p.shape, generator=gen))
    in_input_dtype = family != "mixtral"
    ours = SparseMoeBlock(8, 2, H, INTER, weights_in_input_dtype=in_input_dtype, dtype=torch.bfloat16)
    load_weights(ours, ((rename_fused_experts(n), t) for n, t in hf.state_dict().items()))
    other = SparseMoeBlock(8, 2, H, INTER, weights_in_input_dtype=not in_input_dtype, dtype=torch.bfloat16)
    other.load_state_dict(ours.state_dict())
    x = tokens(37).to(torch.bfloat16)
    with torch.no_grad():
        want = hf(x.unsqueeze(0))[0]
        assert torch.equal(ours(x), want)
        assert not torch.equal(other(x), want)  # the dtype of the routing weights is visible


# -- weight loading --------------------------------------------------------------------------------------------


def per_expert_tensors(num_experts: int, seed: int = 3) -> dict[tuple[int, str], torch.Tensor]:
    """(expert, "w1"/"w2"/"w3") -> full checkpoint tensor: w1, w3 [INTER, H], w2 [H, INTER]."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w1": (INTER, H), "w2": (H, INTER), "w3": (INTER, H)}
    return {(e, n): torch.randn(shapes[n], generator=gen) for e in range(num_experts) for n in shapes}


def load_per_expert(moe: FusedMoE, tensors) -> None:
    for (e, name), t in tensors.items():
        param = moe.w2_weight if name == "w2" else moe.w13_weight
        param.weight_loader(param, t, (e, name))


@pytest.mark.parametrize(("tp_rank", "tp_size"), [(0, 1), (0, 2), (1, 2), (2, 3)])
def test_per_expert_loader_keeps_this_ranks_slice(tp_rank, tp_size):
    tensors = per_expert_tensors(3)
    moe = FusedMoE(3, H, INTER, tp_rank=tp_rank, tp_size=tp_size)
    load_per_expert(moe, tensors)
    part = INTER // tp_size
    rows = slice(tp_rank * part, (tp_rank + 1) * part)
    assert moe.w13_weight.shape == (3, 2 * part, H) and moe.w2_weight.shape == (3, H, part)
    for e in range(3):
        assert torch.equal(moe.w13_weight[e, :part], tensors[e, "w1"][rows])  # gate rows first
        assert torch.equal(moe.w13_weight[e, part:], tensors[e, "w3"][rows])  # then up
        assert torch.equal(moe.w2_weight[e], tensors[e, "w2"][:, rows])  # down: columns


@pytest.mark.parametrize("tp_size", [2, 3])
def test_whole_stacked_tensors_load_like_per_expert_ones(tp_size):
    """HF 5's in-memory layout (gate rows then up rows per expert) split across ranks."""
    tensors = per_expert_tensors(4)
    gate_up = torch.stack([torch.cat([tensors[e, "w1"], tensors[e, "w3"]]) for e in range(4)])  # [E, 2I, H]
    down = torch.stack([tensors[e, "w2"] for e in range(4)])  # [E, H, INTER]
    for rank in range(tp_size):
        a, b = (
            FusedMoE(4, H, INTER, tp_rank=rank, tp_size=tp_size),
            FusedMoE(4, H, INTER, tp_rank=rank, tp_size=tp_size),
        )
        load_per_expert(a, tensors)
        b.weight_loader(b.w13_weight, gate_up)
        b.weight_loader(b.w2_weight, down)
        assert torch.equal(a.w13_weight, b.w13_weight) and torch.equal(a.w2_weight, b.w2_weight)


def test_rank_outputs_sum_to_the_full_output():
    """The slicing convention is row-parallel for w2: partial outputs of the ranks add up (an all-reduce)."""
    tensors = per_expert_tensors(4)
    full = FusedMoE(4, H, INTER)
    load_per_expert(full, tensors)
    x, ids = tokens(9), torch.randint(0, 4, (9, 2), generator=torch.Generator().manual_seed(5))
    weights = torch.rand(9, 2, generator=torch.Generator().manual_seed(6))
    parts = []
    for rank in range(3):
        moe = FusedMoE(4, H, INTER, tp_rank=rank, tp_size=3)
        load_per_expert(moe, tensors)
        parts.append(moe(x, weights, ids))
    torch.testing.assert_close(sum(parts), full(x, weights, ids), atol=1e-5, rtol=1e-5)


def test_loader_errors():
    moe = FusedMoE(2, H, INTER)
    with pytest.raises(ValueError, match="experts 0..1"):
        moe.weight_loader(moe.w13_weight, torch.zeros(INTER, H), (2, "w1"))
    with pytest.raises(ValueError, match="shards"):
        moe.weight_loader(moe.w13_weight, torch.zeros(INTER, H), (0, "gate"))
    with pytest.raises(ValueError, match="does not belong"):
        moe.weight_loader(moe.w13_weight, torch.zeros(H, INTER), (0, "w2"))
    with pytest.raises(RuntimeError, match="must match the size"):
        moe.weight_loader(moe.w13_weight, torch.zeros(INTER + 1, H), (0, "w1"))
    with pytest.raises(ValueError, match="rows per expert"):
        moe.weight_loader(moe.w13_weight, torch.zeros(2, INTER, H))
    with pytest.raises(ValueError, match="rows per expert"):
        moe.weight_loader(moe.w13_weight, torch.zeros(2 * INTER, H))  # one expert's, without its shard id
    with pytest.raises(ValueError, match="not divisible"):
        FusedMoE(2, H, INTER, tp_size=5)


def test_checkpoint_table_maps_expert_ids_and_reports_missing_experts():
    """``experts.{e}.<name>.weight`` -> ``experts.w13_weight`` / ``w2_weight`` shard (e, "w1"/"w2"/"w3")."""
    block = SparseMoeBlock(3, 2, H, INTER)
    table = expert_stacked_params("gate_proj", "down_proj", "up_proj")
    assert ("experts.w13_weight", (2, "w3")) in expected_shards(block, table)
    tensors = per_expert_tensors(3)
    names = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
    checkpoint = {f"experts.{e}.{names[n]}.weight": t for (e, n), t in tensors.items()}
    checkpoint["gate.weight"] = torch.zeros(3, H)
    loaded = load_weights(block, checkpoint.items(), table)
    assert loaded == {"gate.weight", "experts.w13_weight", "experts.w2_weight"}
    assert torch.equal(block.experts.w13_weight[1, INTER:], tensors[1, "w3"])
    del checkpoint["experts.2.up_proj.weight"]
    with pytest.raises(ValueError, match=r"experts\.w13_weight\[\(2, 'w3'\)\]"):
        load_weights(SparseMoeBlock(3, 2, H, INTER), checkpoint.items(), table)


def test_hf5_fused_names_rename_to_ours():
    assert (
        rename_fused_experts("model.layers.0.mlp.experts.gate_up_proj")
        == "model.layers.0.mlp.experts.w13_weight"
    )
    assert (
        rename_fused_experts("model.layers.0.mlp.experts.down_proj") == "model.layers.0.mlp.experts.w2_weight"
    )
    assert rename_fused_experts("model.layers.0.mlp.experts.3.down_proj.weight").endswith(
        "3.down_proj.weight"
    )
