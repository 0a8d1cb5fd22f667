"""Test fixtures: tiny HF-format Llama-family models (weights, config, tokenizer) made locally, no downloads.

    from sglkit.testing import make_tiny_model
    path = make_tiny_model("/tmp/tiny-llama")            # ~140k params, Llama, ChatML tokenizer
    path = make_tiny_model("/tmp/qwen3", "Qwen3ForCausalLM", preset="small")  # ~21M params

CLI: ``python -m sglkit.testing --out DIR [--arch A] [--preset P] [--seed S] [--num-shards N] [--tie-word-embeddings]``.
"""

from sglkit.testing.tiny_models import PRESETS, SUPPORTED_ARCHITECTURES, make_tiny_model, make_tokenizer

__all__ = ["PRESETS", "SUPPORTED_ARCHITECTURES", "make_tiny_model", "make_tokenizer"]
