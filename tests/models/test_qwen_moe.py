"""sglkit Qwen2-MoE and Qwen3-MoE vs HF transformers: logits through the paged KV pool match within 1e-4
(float32), with dense and sparse layers as the config says; the tiny checkpoints have the per-expert layout of
Hub checkpoints, HF loads them to the same values, and HF 5's stacked in-memory names load into our model too."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sglkit.layers.moe import SparseMoeBlock
from sglkit.models.blocks import GatedMLP
from sglkit.models.qwen_moe import Qwen2MoeForCausalLM, Qwen2MoeSparseMoeBlock, Qwen3MoeForCausalLM

# HFComparison methods (tests/models/conftest.py): (a) (b) (c) (d) of the model test plan.
SCENARIOS = ("single_prefill", "packed_extend", "prefix_extend", "decode_after_prefill")
VARIANTS = ["qwen2-moe", "qwen2-moe-step-2", "qwen3-moe", "qwen3-moe-tied-bias"]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(hf_comparison, variant, scenario):
    getattr(hf_comparison(variant), scenario)()


@pytest.mark.parametrize(
    ("variant", "sparse_layers"),
    [
        ("qwen2-moe", [0, 2, 3]),
        ("qwen2-moe-step-2", [1, 3]),
        ("qwen3-moe", [1, 2, 3]),
        ("qwen3-moe-tied-bias", [0, 1]),
    ],
)
def test_dense_and_sparse_layers_follow_the_config(hf_comparison, variant, sparse_layers):
    comparison = hf_comparison(variant)
    model, hf = comparison.model, comparison.hf_model
    is_qwen2 = variant.startswith("qwen2")
    assert type(model) is (Qwen2MoeForCausalLM if is_qwen2 else Qwen3MoeForCausalLM)
    for i, layer in enumerate(model.model.layers):
        hf_sparse = hasattr(hf.model.layers[i].mlp, "experts")
        assert (i in sparse_layers) == hf_sparse == isinstance(layer.mlp, SparseMoeBlock), i
        if not hf_sparse:
            assert isinstance(layer.mlp, GatedMLP) and layer.mlp.down_proj.in_features == 128
            continue
        assert isinstance(layer.mlp, Qwen2MoeSparseMoeBlock) == is_qwen2
        assert layer.mlp.renormalize == bool(hf.config.norm_topk_prob)
        assert layer.mlp.weights_in_input_dtype and layer.mlp.experts.w2_weight.shape == (8, 64, 64)
    attn = model.model.layers[0].self_attn
    assert (attn.qkv_proj.bias is not None) == (variant != "qwen3-moe")
    assert attn.qk_norm == (not is_qwen2) and (attn.o_proj.bias is not None) == (
        variant == "qwen3-moe-tied-bias"
    )


@pytest.mark.parametrize("variant", ["qwen2-moe", "qwen3-moe"])
def test_checkpoint_is_per_expert_and_hf_loads_the_same_values(tiny_model_path, hf_model, variant):
    path = tiny_model_path(variant)
    written = load_file(path / "model.safetensors")
    assert "model.layers.3.mlp.experts.7.gate_proj.weight" in written
    assert not any("gate_up_proj" in name for name in written)
    if variant == "qwen2-moe":
        assert written["model.layers.0.mlp.shared_expert_gate.weight"].shape == (1, 64)
        assert "model.layers.0.mlp.shared_expert.up_proj.weight" in written
    hf = hf_model(path)
    for name, value in hf.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H]: per expert, gate rows then up rows
            base = name.removesuffix("gate_up_proj")
            parts = [
                torch.cat([written[f"{base}{e}.gate_proj.weight"], written[f"{base}{e}.up_proj.weight"]])
                for e in range(8)
            ]
            want = torch.stack(parts)
        elif name.endswith("mlp.experts.down_proj"):
            want = torch.stack(
                [written[f"{name.removesuffix('down_proj')}{e}.down_proj.weight"] for e in range(8)]
            )
        elif name == "lm_head.weight" and hf.config.tie_word_embeddings:
            want = written["model.embed_tokens.weight"]
        else:
            want = written[name]
        assert torch.equal(value, want), name


@pytest.mark.parametrize("variant", ["qwen2-moe", "qwen3-moe-tied-bias"])
@pytest.mark.parametrize("source", ["hf5-state-dict", "own-state-dict"])
def test_stacked_names_load(hf_comparison, variant, source):
    """HF 5's state_dict (stacked ``mlp.experts.gate_up_proj`` / ``down_proj``) and our own (``w13_weight`` /
    ``w2_weight``, as update_weights re-reads it) load to the same parameters as the per-expert checkpoint."""
    comparison = hf_comparison(variant)
    model = type(comparison.model)(comparison.config)
    state = comparison.hf_model.state_dict() if source == "hf5-state-dict" else comparison.model.state_dict()
    model.load_weights(state.items())
    for name, param in comparison.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], param), name


def test_unsupported_sparse_step_raises(tiny_model_factory):
    from sglkit.models import load_model

    path = tiny_model_factory("Qwen3MoeForCausalLM", num_hidden_layers=1)
    config = load_model(path, dtype="float32")[1]
    config.hf_config.decoder_sparse_step = 0
    with pytest.raises(ValueError, match="decoder_sparse_step must be a positive integer"):
        Qwen3MoeForCausalLM(config)
