"""sglkit Qwen2 vs HF transformers: logits through the paged KV pool match within 1e-4 (float32)."""

from __future__ import annotations

import pytest

from sglkit.models.qwen2 import Qwen2ForCausalLM

# HFComparison methods (tests/models/conftest.py): (a) (b) (c) (d) of the model test plan.
SCENARIOS = ("single_prefill", "packed_extend", "prefix_extend", "decode_after_prefill")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("variant", ["qwen2", "qwen2-tied"])
def test_logits_match_transformers(hf_comparison, variant, scenario):
    getattr(hf_comparison(variant), scenario)()


def test_qkv_bias_without_output_bias(hf_comparison):
    model = hf_comparison("qwen2").model
    assert type(model) is Qwen2ForCausalLM
    attn = model.model.layers[0].self_attn
    assert attn.qkv_proj.bias is not None and attn.o_proj.bias is None and not attn.qk_norm
