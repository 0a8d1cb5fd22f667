"""Shared decoder blocks (sglkit/models/blocks.py, decoder.py): MLP activations from the config, pluggable norms,
attention options reaching RadixAttention, and a sliding-window decoder equal to HF Mistral's windowed attention."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from sglkit.core.forward_batch import ForwardMode
from sglkit.core.model_config import ModelConfig
from sglkit.layers.norm import RMSNorm
from sglkit.layers.rotary import get_rope
from sglkit.models.blocks import (
    AttentionBlock,
    AttentionOptions,
    DecoderLayer,
    DecoderModel,
    DecoderOptions,
    GatedMLP,
)
from sglkit.models.llama import STACKED_PARAMS, MistralForCausalLM
from sglkit.models.weight_utils import load_weights


def tiny_config(**overrides) -> ModelConfig:
    kwargs = dict(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        rms_norm_eps=1e-5,
    )
    return ModelConfig.from_hf(LlamaConfig(**(kwargs | overrides)))


@pytest.mark.parametrize("hidden_act", ["silu", "gelu", "gelu_pytorch_tanh"])
def test_gated_mlp_matches_hf_llama_mlp_for_each_activation(hidden_act):
    from transformers.models.llama.modeling_llama import LlamaMLP

    hf = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=48, hidden_act=hidden_act)).eval()
    ours = GatedMLP(32, 48, hidden_act)
    load_weights(ours, hf.state_dict().items(), STACKED_PARAMS)
    x = torch.randn(7, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x), atol=1e-6, rtol=1e-5)


def test_unknown_activation_fails_clearly():
    with pytest.raises(ValueError, match=r"Unsupported hidden_act 'relu'"):
        GatedMLP(8, 16, "relu")


class OnePlusRMSNorm(RMSNorm):
    """Gemma-style norm: scales by (1 + w); same call convention as RMSNorm."""

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).to(x.dtype)


def test_norm_class_and_eps_are_pluggable():
    config = tiny_config()
    options = DecoderOptions(attention=AttentionOptions(qk_norm=True), norm_cls=OnePlusRMSNorm, norm_eps=1e-3)
    model = DecoderModel(config, options)
    layer = model.layers[0]
    norms = [layer.input_layernorm, layer.post_attention_layernorm, layer.self_attn.q_norm, model.norm]
    assert all(type(n) is OnePlusRMSNorm and n.eps == 1e-3 for n in norms)
    plain = DecoderLayer(config, 0, model.rotary_emb)
    assert type(plain.input_layernorm) is RMSNorm and plain.input_layernorm.eps == 1e-5
    assert not plain.self_attn.qk_norm


def test_attention_options_reach_the_layers():
    config = tiny_config(head_dim=16)
    rope = get_rope(config.head_dim, config.context_len, config.rope_parameters)
    options = AttentionOptions(qkv_bias=True, logit_cap=30.0, scaling=0.25)
    attn = AttentionBlock(config, 1, rope, options)
    assert attn.qkv_proj.weight.shape == ((4 + 2 * 2) * 16, 32) and attn.qkv_proj.bias is not None
    assert attn.o_proj.weight.shape == (32, 64) and attn.o_proj.bias is None
    radix = attn.attn
    assert (radix.layer_id, radix.num_heads, radix.num_kv_heads, radix.head_dim) == (1, 4, 2, 16)
    assert (radix.sliding_window, radix.logit_cap, radix.scaling) == (None, 30.0, 0.25)
    default = AttentionBlock(config, 0, rope).attn
    assert default.scaling == 16**-0.5 and not default.has_options


def test_each_layer_takes_its_window_from_the_config():
    """Windows come from ModelConfig.layer_sliding_window: every layer (Mistral), or per layer_types (Gemma)."""
    rope = get_rope(16, 2048, None)
    every = tiny_config(head_dim=16, sliding_window=128)
    assert [AttentionBlock(every, i, rope).attn.sliding_window for i in range(2)] == [128, 128]
    alternating = ModelConfig.from_hf(
        LlamaConfig(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
        )
    )
    assert [AttentionBlock(alternating, i, rope).attn.sliding_window for i in range(2)] == [8, None]
    assert AttentionBlock(tiny_config(head_dim=16), 0, rope).attn.sliding_window is None


def test_sliding_window_decoder_matches_hf_mistral(tmp_path, paged_runner):
    from transformers import AutoModelForCausalLM

    from sglkit.models import iterate_weights, load_config
    from sglkit.testing import make_tiny_model

    path = make_tiny_model(tmp_path, "MistralForCausalLM", sliding_window=6)
    config = ModelConfig.from_hf(load_config(path))
    model = MistralForCausalLM(config)
    model.load_weights(iterate_weights(path, show_progress=False))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = torch.randint(6, config.vocab_size, (20,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0]
        unwindowed = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, sliding_window=None)
        assert not torch.allclose(unwindowed(torch.tensor([prompt])).logits[0, -1], ref[-1], atol=1e-3)

    runner = paged_runner(model, config)
    (first,) = runner.forward([("a", prompt[:9])])  # chunked prefill: the second chunk sees a cached prefix
    (second,) = runner.forward([("a", prompt[9:17])])
    torch.testing.assert_close(torch.cat([first, second]), ref[:17], atol=1e-4, rtol=1e-4)
    for pos in range(17, 20):  # decode steps through the workspace
        (step,) = runner.forward([("a", [prompt[pos]])], ForwardMode.DECODE)
        torch.testing.assert_close(step[0], ref[pos], atol=1e-4, rtol=1e-4)
