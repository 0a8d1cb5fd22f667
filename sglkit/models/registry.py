"""Models: architecture name (config.json ``architectures``) -> sglkit model class. Used by the loader.

Generation (the default) and embedding (``--is-embedding``) have separate tables: a causal LM served with
``--is-embedding`` becomes its embedding variant (last-token pooling, no LM head).
"""

from __future__ import annotations

import importlib

__all__ = ["MODEL_REGISTRY", "EMBEDDING_MODEL_REGISTRY", "get_model_class", "supported_architectures"]

# Architecture name -> "module:ClassName" (imported on first use).
MODEL_REGISTRY: dict[str, str] = {
    "LlamaForCausalLM": "sglkit.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "sglkit.models.llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "sglkit.models.qwen2:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "sglkit.models.qwen3:Qwen3ForCausalLM",
    "Gemma2ForCausalLM": "sglkit.models.gemma2:Gemma2ForCausalLM",
    "Gemma3ForCausalLM": "sglkit.models.gemma3:Gemma3ForCausalLM",
    "Olmo2ForCausalLM": "sglkit.models.olmo2:Olmo2ForCausalLM",
    "Phi3ForCausalLM": "sglkit.models.phi3:Phi3ForCausalLM",
    "MixtralForCausalLM": "sglkit.models.mixtral:MixtralForCausalLM",
    "Qwen2MoeForCausalLM": "sglkit.models.qwen_moe:Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM": "sglkit.models.qwen_moe:Qwen3MoeForCausalLM",
}

_EMBED = "sglkit.models.llama_embedding"
# Architecture name -> class when serving embeddings / rewards (``is_embedding``).
EMBEDDING_MODEL_REGISTRY: dict[str, str] = {
    "LlamaForCausalLM": f"{_EMBED}:LlamaEmbeddingModel",
    "LlamaModel": f"{_EMBED}:LlamaEmbeddingModel",
    "MistralForCausalLM": f"{_EMBED}:LlamaEmbeddingModel",
    "MistralModel": f"{_EMBED}:LlamaEmbeddingModel",
    "Qwen2ForCausalLM": f"{_EMBED}:Qwen2EmbeddingModel",
    "Qwen2Model": f"{_EMBED}:Qwen2EmbeddingModel",
    "Qwen3ForCausalLM": f"{_EMBED}:Qwen3EmbeddingModel",
    "Qwen3Model": f"{_EMBED}:Qwen3EmbeddingModel",
    "LlamaForSequenceClassification": f"{_EMBED}:LlamaForSequenceClassification",
    "Qwen2ForSequenceClassification": f"{_EMBED}:Qwen2ForSequenceClassification",
    "BertModel": "sglkit.models.bert:BertModel",
}


def supported_architectures(is_embedding: bool = False) -> list[str]:
    """Architecture names sglkit can run (as generation models, or as embedding models)."""
    return list(EMBEDDING_MODEL_REGISTRY if is_embedding else MODEL_REGISTRY)


def get_model_class(architectures: list[str] | None, is_embedding: bool = False) -> type:
    """Return the class of the first supported name in ``architectures``; ValueError naming the unsupported ones."""
    registry = EMBEDDING_MODEL_REGISTRY if is_embedding else MODEL_REGISTRY
    for name in architectures or []:
        if name in registry:
            module_name, class_name = registry[name].split(":")
            return getattr(importlib.import_module(module_name), class_name)
    names = list(architectures or [])
    if not is_embedding and any(name in EMBEDDING_MODEL_REGISTRY for name in names):
        raise ValueError(
            f"Model architectures {names} are embedding / reward models: serve them with --is-embedding "
            "(Engine(..., is_embedding=True))."
        )
    kind = "embedding" if is_embedding else "generation"
    raise ValueError(
        f"Model architectures {names} are not supported by sglkit as {kind} models. "
        f"Supported architectures: {supported_architectures(is_embedding)}."
    )
