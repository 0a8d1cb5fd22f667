"""sglkit Gemma 2 vs HF transformers: logits through the paged KV pool match within 1e-4 (float32), with every
Gemma 2 feature switched on (sandwich norms, (1 + w) norms, scaled embedding, both soft-caps, local layers)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma2Config

from sglkit.core.model_config import ModelConfig
from sglkit.layers.norm import GemmaRMSNorm
from sglkit.models.gemma2 import Gemma2ForCausalLM, embedding_scale
from sglkit.models.post_norm_blocks import PostNormDecoderLayer
from tests.models.conftest import assert_bfloat16_close_to_hf

# HFComparison methods (tests/models/conftest.py): (a) (b) (c) (d) of the model test plan.
SCENARIOS = ("single_prefill", "packed_extend", "prefix_extend", "decode_after_prefill")
NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("variant", ["gemma2", "gemma2-window-6"])
def test_logits_match_transformers(hf_comparison, variant, scenario):
    getattr(hf_comparison(variant), scenario)()


def test_structure(hf_comparison):
    model = hf_comparison("gemma2").model
    assert type(model) is Gemma2ForCausalLM and not hasattr(model, "lm_head")  # tied
    layers = model.model.layers
    assert all(type(layer) is PostNormDecoderLayer for layer in layers)
    assert all(type(getattr(layer, name)) is GemmaRMSNorm for layer in layers for name in NORMS)
    attn = layers[0].self_attn.attn
    assert (attn.logit_cap, attn.scaling) == (
        50.0,
        16**-0.5,
    )  # query_pre_attn_scalar = head_dim in tiny models
    assert model.final_logit_softcapping == 30.0 and model.model.embed_scale == 8.0
    # Local (sliding) and global layers alternate, from the config's layer_types.
    assert [layer.self_attn.attn.sliding_window for layer in layers] == [4096, None, 4096, None]
    windowed = hf_comparison("gemma2-window-6").model
    assert [layer.self_attn.attn.sliding_window for layer in windowed.model.layers] == [6, None, 6, None]
    assert hasattr(windowed, "lm_head")


@pytest.mark.parametrize(
    "override",
    [{"attn_logit_softcapping": None}, {"final_logit_softcapping": None}, {"sliding_window": 4096}],
    ids=["no-attn-softcap", "no-final-softcap", "no-window"],
)
def test_each_feature_changes_hf_logits(tiny_model_path, hf_comparison, override):
    """The parity test above exercises each feature: HF without it gives other logits."""
    path = tiny_model_path("gemma2-window-6")
    comparison = hf_comparison("gemma2-window-6")
    prompt = comparison.prompts[2]  # 23 tokens: past the 6-token window
    without = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **override).eval()
    with torch.no_grad():
        changed = without(torch.tensor([prompt])).logits[0]
    assert (changed - comparison.reference(prompt)).abs().max() > 1e-2


def test_bfloat16_matches_transformers_bfloat16(tiny_model_path):
    assert_bfloat16_close_to_hf(tiny_model_path("gemma2-window-6"))


@pytest.mark.parametrize("hidden_size", [64, 2304, 3584, 4608])
def test_embedding_scale_rounds_like_transformers(hidden_size):
    """HF multiplies by sqrt(hidden_size) cast to the weight dtype: 3584 -> 59.75 in bfloat16, not 59.87."""
    from transformers.models.gemma2.modeling_gemma2 import Gemma2TextScaledWordEmbedding

    hf = Gemma2TextScaledWordEmbedding(5, hidden_size, 0, embed_scale=hidden_size**0.5).to(torch.bfloat16)
    ids = torch.tensor([1, 4])
    ours = torch.nn.functional.embedding(ids, hf.weight) * embedding_scale(hidden_size, torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(ours, hf(ids))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"use_bidirectional_attention": True}, "use_bidirectional_attention"),
        ({"final_logit_softcapping": 0.0}, "final_logit_softcapping must be positive"),
        ({"hidden_activation": "relu"}, "Unsupported hidden_act 'relu'"),
    ],
)
def test_unsupported_settings_fail_clearly(override, message):
    kwargs = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, head_dim=16
    )
    config = Gemma2Config(vocab_size=64, **kwargs, **override)
    with pytest.raises(ValueError, match=message):
        Gemma2ForCausalLM(ModelConfig.from_hf(config))
