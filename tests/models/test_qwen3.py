"""sglkit Qwen3 vs HF transformers: logits through the paged KV pool match within 1e-4 (float32)."""

from __future__ import annotations

import pytest

from sglkit.models.qwen3 import Qwen3ForCausalLM

# HFComparison methods (tests/models/conftest.py): (a) (b) (c) (d) of the model test plan.
SCENARIOS = ("single_prefill", "packed_extend", "prefix_extend", "decode_after_prefill")


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("variant", ["qwen3", "qwen3-tied", "qwen3-head-dim-32-bias"])
def test_logits_match_transformers(hf_comparison, variant, scenario):
    getattr(hf_comparison(variant), scenario)()


def test_per_head_qk_norm(hf_comparison):
    model = hf_comparison("qwen3").model
    assert type(model) is Qwen3ForCausalLM
    attn = model.model.layers[0].self_attn
    assert attn.qk_norm and attn.q_norm.weight.shape == (attn.head_dim,) and attn.qkv_proj.bias is None
