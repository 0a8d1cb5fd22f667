"""ModelConfig (sglkit/core/model_config.py): one normalisation of HF configs for models, runner and KV pool."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from sglkit.core.model_config import DEFAULT_CONTEXT_LEN, ModelConfig, config_dtype


def test_llama_gqa_derives_head_dim_and_kv_heads():
    hf = LlamaConfig(
        hidden_size=64,
        num_attention_heads=8,
        num_key_value_heads=2,
        num_hidden_layers=3,
        intermediate_size=128,
        vocab_size=100,
        max_position_embeddings=512,
        rope_theta=5e5,
    )
    cfg = ModelConfig.from_hf(hf)
    assert (cfg.head_dim, cfg.num_key_value_heads, cfg.num_hidden_layers) == (8, 2, 3)
    assert (cfg.q_size, cfg.kv_size) == (64, 16)
    assert cfg.context_len == 512 and cfg.vocab_size == 100
    assert cfg.rope_parameters["rope_theta"] == 5e5
    assert cfg.sliding_window is None and cfg.hf_config is hf


def test_explicit_head_dim_wins():
    hf = Qwen3Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=4, head_dim=32, num_hidden_layers=1
    )
    cfg = ModelConfig.from_hf(hf)
    assert cfg.head_dim == 32 and cfg.q_size == 128


def test_mha_config_without_kv_heads():
    class Plain:
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads = 10, 16, 1, 4

    cfg = ModelConfig.from_hf(Plain())
    assert cfg.num_key_value_heads == 4 and cfg.head_dim == 4
    assert cfg.context_len == DEFAULT_CONTEXT_LEN and cfg.rope_parameters == {"rope_theta": 10000.0}


def test_sliding_window_only_when_used():
    assert ModelConfig.from_hf(MistralConfig(sliding_window=64)).sliding_window == 64
    assert (
        ModelConfig.from_hf(Qwen2Config(sliding_window=64, use_sliding_window=False)).sliding_window is None
    )


def test_dtype_and_tied_embeddings():
    hf = LlamaConfig(tie_word_embeddings=True, dtype="bfloat16")
    cfg = ModelConfig.from_hf(hf)
    assert cfg.tie_word_embeddings and cfg.dtype is torch.bfloat16
    assert config_dtype(LlamaConfig()) in (None, torch.float32)
