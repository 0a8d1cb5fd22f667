"""Models: architecture name (config.json ``architectures``) -> sglkit model class. Used by the loader."""

from __future__ import annotations

import importlib

__all__ = ["MODEL_REGISTRY", "get_model_class", "supported_architectures"]

# Architecture name -> "module:ClassName" (imported on first use).
MODEL_REGISTRY: dict[str, str] = {
    "LlamaForCausalLM": "sglkit.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "sglkit.models.llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "sglkit.models.qwen2:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "sglkit.models.qwen3:Qwen3ForCausalLM",
}


def supported_architectures() -> list[str]:
    """Architecture names sglkit can run."""
    return list(MODEL_REGISTRY)


def get_model_class(architectures: list[str] | None) -> type:
    """Return the class of the first supported name in ``architectures``; ValueError naming the unsupported ones."""
    for name in architectures or []:
        if name in MODEL_REGISTRY:
            module_name, class_name = MODEL_REGISTRY[name].split(":")
            return getattr(importlib.import_module(module_name), class_name)
    raise ValueError(
        f"Model architectures {list(architectures or [])} are not supported by sglkit. "
        f"Supported architectures: {supported_architectures()}."
    )
