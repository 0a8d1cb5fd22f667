"""sglkit Llama/Mistral vs HF transformers: logits through the paged KV pool match within 1e-4 (float32)."""

from __future__ import annotations

import pytest
import torch

from sglkit.models.llama import LlamaForCausalLM, MistralForCausalLM
from tests.models.conftest import assert_bfloat16_close_to_hf

VARIANTS = [
    "llama",
    "llama-tied",
    "mistral",
    "mistral-tied",
    "llama-llama3-rope",
    "llama-linear-rope",
    "llama-sharded",
    "llama-head-dim-32",
    "llama-bias",
]

# HFComparison methods (tests/models/conftest.py): (a) (b) (c) (d) of the model test plan.
SCENARIOS = ("single_prefill", "packed_extend", "prefix_extend", "decode_after_prefill")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(hf_comparison, variant, scenario):
    getattr(hf_comparison(variant), scenario)()


def test_model_classes_and_fused_parameters(hf_comparison):
    llama = hf_comparison("llama").model
    assert type(llama) is LlamaForCausalLM and llama.sliding_window is None
    names = {n for n, _ in llama.named_parameters()}
    assert (
        "model.layers.0.self_attn.qkv_proj.weight" in names
        and "model.layers.0.mlp.gate_up_proj.weight" in names
    )
    assert not any("q_proj" in n or "gate_proj." in n for n in names)
    tied = hf_comparison("llama-tied").model
    assert "lm_head.weight" not in dict(tied.named_parameters())
    assert tied.lm_head_weight is tied.model.embed_tokens.weight


def test_mistral_exposes_sliding_window(tmp_path):
    from sglkit.models import load_model
    from sglkit.testing import make_tiny_model

    path = make_tiny_model(tmp_path, "MistralForCausalLM", sliding_window=64)
    model, _ = load_model(path)
    assert type(model) is MistralForCausalLM and model.sliding_window == 64


def test_head_dim_differs_from_hidden_over_heads(hf_comparison):
    attn = hf_comparison("llama-head-dim-32").model.model.layers[0].self_attn
    assert (
        attn.head_dim == 32
        and attn.qkv_proj.out_features == (4 + 2 * 2) * 32
        and attn.o_proj.in_features == 128
    )


def test_rejects_unsupported_activation():
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=64,
        hidden_act="relu",
    )
    with pytest.raises(ValueError, match="hidden_act"):
        LlamaForCausalLM(config)


@pytest.mark.parametrize("variant", ["llama", "qwen3-tied"])
def test_bfloat16_load_matches_transformers_bfloat16(tiny_model_path, variant):
    from sglkit.models import load_model

    path = tiny_model_path(variant)
    model, _ = load_model(path, dtype="bfloat16")
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.rotary_emb.cos_sin_cache.dtype == torch.float32
    assert_bfloat16_close_to_hf(path)


def test_load_weights_from_other_size_raises_torch_size_message(tmp_path):
    from sglkit.models import iterate_weights, load_model
    from sglkit.testing import make_tiny_model

    model, _ = load_model(make_tiny_model(tmp_path / "h64", hidden_size=64))
    bigger = make_tiny_model(tmp_path / "h96", hidden_size=96, intermediate_size=192)
    with pytest.raises(RuntimeError) as err:
        model.load_weights(iterate_weights(bigger, show_progress=False))
    assert (
        str(err.value)
        == "The size of tensor a (64) must match the size of tensor b (96) at non-singleton dimension 1"
    )


def test_load_weights_round_trips_and_reports_bad_names(tiny_model_path):
    from sglkit.models import iterate_weights, load_model

    model, _ = load_model(tiny_model_path("llama"))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    checkpoint = dict(iterate_weights(tiny_model_path("llama"), show_progress=False))
    for name in checkpoint:  # overwrite with zeros, then reload: every parameter is restored
        checkpoint[name] = torch.zeros_like(checkpoint[name])
    model.load_weights(checkpoint.items())
    assert all((p == 0).all() for p in model.state_dict().values())
    model.load_weights(before.items())  # our own fused names are accepted too
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())

    with pytest.raises(ValueError, match=r"Unexpected weight 'model.layers.5.mlp.up_proj.weight'"):
        model.load_weights([("model.layers.5.mlp.up_proj.weight", torch.zeros(128, 64))])
    partial = [(n, t) for n, t in checkpoint.items() if "layers.1.self_attn.k_proj" not in n]
    with pytest.raises(ValueError, match=r"did not provide.*model.layers.1.self_attn.qkv_proj.weight\[k\]"):
        model.load_weights(partial)
    with_inv_freq = [*checkpoint.items(), ("model.layers.0.self_attn.rotary_emb.inv_freq", torch.zeros(8))]
    model.load_weights(with_inv_freq)  # rotary buffers in old checkpoints are skipped


def test_tied_model_skips_lm_head_in_checkpoint(tiny_model_path):
    from sglkit.models import iterate_weights, load_model

    model, _ = load_model(tiny_model_path("llama-tied"))
    weights = list(iterate_weights(tiny_model_path("llama-tied"), show_progress=False))
    embed = dict(weights)["model.embed_tokens.weight"]
    model.load_weights([*weights, ("lm_head.weight", torch.zeros_like(embed))])
    assert torch.equal(model.lm_head_weight, embed)
