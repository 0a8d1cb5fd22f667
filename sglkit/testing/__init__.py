"""Test fixtures: tiny HF-format Llama-family models (weights, config, tokenizer) made locally, no downloads.

    from sglkit.testing import make_tiny_model
    path = make_tiny_model("/tmp/tiny-llama")            # ~140k params, Llama, ChatML tokenizer
    path = make_tiny_model("/tmp/qwen3", "Qwen3ForCausalLM", preset="small")  # ~21M params
    path = make_tiny_embedding_model("/tmp/tiny-bert", "BertModel", pooling="mean")  # sentence-transformers layout

CLI: ``python -m sglkit.testing --out DIR [--arch A] [--preset P] [--seed S] [--num-shards N] [--tie-word-embeddings]``.
"""

from sglkit.testing.tiny_embedding_models import EMBEDDING_ARCHITECTURES, make_tiny_embedding_model
from sglkit.testing.tiny_models import PRESETS, SUPPORTED_ARCHITECTURES, make_tiny_model, make_tokenizer

__all__ = [
    "EMBEDDING_ARCHITECTURES",
    "PRESETS",
    "SUPPORTED_ARCHITECTURES",
    "make_tiny_embedding_model",
    "make_tiny_model",
    "make_tokenizer",
]
