"""Models: sglkit's own Llama-family implementations, their registry and the safetensors loader.

from sglkit.models import load_model
model, config = load_model("/path/to/hf-folder", dtype="auto", device="cpu")
"""

from sglkit.models.loader import (
    find_safetensors_files,
    iterate_weights,
    load_config,
    load_model,
    resolve_dtype,
)
from sglkit.models.registry import get_model_class, supported_architectures

__all__ = [
    "find_safetensors_files",
    "get_model_class",
    "iterate_weights",
    "load_config",
    "load_model",
    "resolve_dtype",
    "supported_architectures",
]
