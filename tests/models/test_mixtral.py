"""sglkit Mixtral vs HF transformers: logits through the paged KV pool match within 1e-4 (float32); the tiny
checkpoint has the per-expert layout of Hub checkpoints, HF loads it to the same values, and HF 5's stacked
in-memory names load into our model too."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sglkit.layers.moe import SparseMoeBlock
from sglkit.models.mixtral import MixtralForCausalLM

# HFComparison methods (tests/models/conftest.py): (a) (b) (c) (d) of the model test plan.
SCENARIOS = ("single_prefill", "packed_extend", "prefix_extend", "decode_after_prefill")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("variant", ["mixtral", "mixtral-top1-window"])
def test_logits_match_transformers(hf_comparison, variant, scenario):
    getattr(hf_comparison(variant), scenario)()


def test_every_layer_is_sparse(hf_comparison):
    model = hf_comparison("mixtral").model
    assert type(model) is MixtralForCausalLM
    for layer in model.model.layers:
        moe = layer.mlp
        assert isinstance(moe, SparseMoeBlock) and moe.top_k == 2 and moe.renormalize
        assert not moe.weights_in_input_dtype  # routing weights stay float32, as HF Mixtral
        assert moe.experts.w13_weight.shape == (4, 2 * 128, 64) and moe.experts.w2_weight.shape == (
            4,
            64,
            128,
        )


def test_checkpoint_is_per_expert_and_hf_loads_the_same_values(tiny_model_path, hf_model):
    path = tiny_model_path("mixtral")
    written = load_file(path / "model.safetensors")
    prefix = "model.layers.2.block_sparse_moe"
    assert {f"{prefix}.gate.weight", f"{prefix}.experts.3.w1.weight", f"{prefix}.experts.3.w2.weight"} <= set(
        written
    )
    assert not any(".mlp." in name or "gate_up_proj" in name for name in written)
    hf = hf_model(path)
    for name, value in hf.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H]: per expert, w1 (gate) rows then w3 (up)
            base = name.replace("mlp.experts.gate_up_proj", "block_sparse_moe.experts")
            want = torch.stack(
                [
                    torch.cat([written[f"{base}.{e}.w1.weight"], written[f"{base}.{e}.w3.weight"]])
                    for e in range(4)
                ]
            )
        elif name.endswith("mlp.experts.down_proj"):
            base = name.replace("mlp.experts.down_proj", "block_sparse_moe.experts")
            want = torch.stack([written[f"{base}.{e}.w2.weight"] for e in range(4)])
        else:
            want = written[name.replace(".mlp.gate.", ".block_sparse_moe.gate.")]
        assert torch.equal(value, want), name


def test_hf5_in_memory_names_load(hf_comparison):
    """HF 5's state_dict (``mlp.gate``, stacked ``mlp.experts.gate_up_proj`` / ``down_proj``) loads as is."""
    comparison = hf_comparison("mixtral")
    model = MixtralForCausalLM(comparison.config)
    model.load_weights(comparison.hf_model.state_dict().items())
    for name, param in comparison.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], param), name
