"""The shared loading loop (sglkit/models/weight_utils.py): name table -> fused shards, own fused names, and the
errors for unexpected tensors, missing parameters / shards and size mismatches."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from sglkit.layers.linear import MergedColumnParallelLinear, QKVParallelLinear
from sglkit.layers.norm import RMSNorm
from sglkit.models.llama import STACKED_PARAMS
from sglkit.models.weight_utils import expected_shards, load_weights


class Block(nn.Module):
    """Fused q/k/v (2 heads, 1 KV head, head_dim 2), fused gate/up, a loader-carrying norm and a plain LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.Module()
        self.self_attn.qkv_proj = QKVParallelLinear(4, 2, 2, 1, bias=True)
        self.mlp = nn.Module()
        self.mlp.gate_up_proj = MergedColumnParallelLinear(4, [3, 3], bias=False)
        self.norm = RMSNorm(4)
        self.ln = nn.LayerNorm(4)  # no weight_loader attribute: strict whole-tensor copy


def hf_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "self_attn.q_proj.weight": (4, 4),
        "self_attn.q_proj.bias": (4,),
        "self_attn.k_proj.weight": (2, 4),
        "self_attn.k_proj.bias": (2,),
        "self_attn.v_proj.weight": (2, 4),
        "self_attn.v_proj.bias": (2,),
        "mlp.gate_proj.weight": (3, 4),
        "mlp.up_proj.weight": (3, 4),
        "norm.weight": (4,),
        "ln.weight": (4,),
        "ln.bias": (4,),
    }
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def test_table_maps_checkpoint_modules_onto_fused_rows():
    block, ckpt = Block(), hf_checkpoint()
    names = load_weights(block, ckpt.items(), STACKED_PARAMS)
    assert names == {name for name, _ in block.named_parameters()}
    attn = block.self_attn.qkv_proj
    assert torch.equal(attn.weight, torch.cat([ckpt[f"self_attn.{p}_proj.weight"] for p in "qkv"]))
    assert torch.equal(attn.bias, torch.cat([ckpt[f"self_attn.{p}_proj.bias"] for p in "qkv"]))
    gate_up = block.mlp.gate_up_proj.weight
    assert torch.equal(gate_up, torch.cat([ckpt["mlp.gate_proj.weight"], ckpt["mlp.up_proj.weight"]]))
    assert torch.equal(block.ln.bias.data, ckpt["ln.bias"])


def test_own_fused_state_dict_loads_back():
    block, other = Block(), Block()
    load_weights(block, hf_checkpoint(1).items(), STACKED_PARAMS)
    load_weights(other, block.state_dict().items(), STACKED_PARAMS)  # qkv_proj.weight: every shard at once
    assert all(torch.equal(a, b) for a, b in zip(block.state_dict().values(), other.state_dict().values()))


def test_missing_shards_and_parameters_are_listed():
    assert ("self_attn.qkv_proj.weight", "k") in expected_shards(Block(), STACKED_PARAMS)
    ckpt = {
        n: t
        for n, t in hf_checkpoint().items()
        if n not in ("self_attn.k_proj.weight", "mlp.up_proj.weight", "ln.bias")
    }
    with pytest.raises(ValueError) as err:
        load_weights(Block(), ckpt.items(), STACKED_PARAMS)
    assert str(err.value) == (
        "Checkpoint did not provide these parameters of Block: ln.bias, mlp.gate_up_proj.weight[1], "
        "self_attn.qkv_proj.weight[k]."
    )
    with pytest.raises(ValueError, match=r"\.\.\. \(11 in all\)"):
        load_weights(Block(), [], STACKED_PARAMS)


def test_unexpected_tensor_is_named_and_rename_can_skip():
    ckpt = hf_checkpoint()
    with pytest.raises(
        ValueError, match=r"Unexpected weight 'self_attn.o_proj.weight' in checkpoint for Block\."
    ):
        load_weights(Block(), [*ckpt.items(), ("self_attn.o_proj.weight", torch.zeros(4, 4))], STACKED_PARAMS)
    prefixed = [("bert." + n, t) for n, t in ckpt.items()] + [("pooler.dense.weight", torch.zeros(1))]
    rename = lambda n: None if n.startswith("pooler.") else n.removeprefix("bert.")  # noqa: E731
    load_weights(Block(), prefixed, STACKED_PARAMS, rename=rename)


def test_size_mismatch_raises_torchs_message_with_a_note():
    ckpt = hf_checkpoint()
    ckpt["self_attn.k_proj.weight"] = torch.zeros(4, 4)
    with pytest.raises(RuntimeError) as err:
        load_weights(Block(), ckpt.items(), STACKED_PARAMS)
    assert str(err.value).startswith("The size of tensor a (2) must match the size of tensor b (4)")
    if sys.version_info >= (3, 11):
        assert err.value.__notes__ == [
            "while loading checkpoint tensor 'self_attn.k_proj.weight' into self_attn.qkv_proj.weight"
        ]


def test_loaders_survive_to_empty():
    """Module.to_empty replaces meta parameters (dropping attributes): the module's own loader is used instead."""
    with torch.device("meta"):
        block = Block()
    block.to_empty(device="cpu")
    assert not hasattr(block.self_attn.qkv_proj.weight, "weight_loader")
    ckpt = hf_checkpoint(2)
    load_weights(block, ckpt.items(), STACKED_PARAMS)
    assert torch.equal(block.self_attn.qkv_proj.weight[4:6], ckpt["self_attn.k_proj.weight"])
