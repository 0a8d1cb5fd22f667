"""Model config: the HF ``config.json`` normalised once (loader -> ModelConfig -> models, model runner, KV pool).

HF configs spell the same fact several ways across families and transformers versions (``head_dim`` set or
derived, ``num_key_value_heads`` missing for MHA, ``rope_parameters`` vs ``rope_theta``/``rope_scaling``,
``dtype`` vs ``torch_dtype``). Everything downstream reads this dataclass instead, so each rule lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ModelConfig", "config_dtype"]

DEFAULT_CONTEXT_LEN = 2048  # when a config names no max_position_embeddings
_DTYPE_NAMES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
}


def config_dtype(hf_config: Any) -> torch.dtype | None:
    """The checkpoint dtype a config records (``dtype``, or the older ``torch_dtype``), if any."""
    value = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(value, str):
        value = _DTYPE_NAMES.get(value.replace("torch.", ""))
    return value if isinstance(value, torch.dtype) else None


def _rope_parameters(hf_config: Any) -> dict[str, Any]:
    """transformers 5 ``rope_parameters``; the older ``rope_theta`` + ``rope_scaling`` pair is accepted."""
    params = getattr(hf_config, "rope_parameters", None)
    if params:
        return dict(params)
    params = dict(getattr(hf_config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    # Top-level in Phi-3 style configs; transformers moves them in (its original_max wins, as here).
    if getattr(hf_config, "partial_rotary_factor", None) is not None:
        params.setdefault("partial_rotary_factor", hf_config.partial_rotary_factor)
    if params and getattr(hf_config, "original_max_position_embeddings", None) is not None:
        params["original_max_position_embeddings"] = hf_config.original_max_position_embeddings
    return params


def _rope_parameters_by_layer_type(hf_config: Any) -> dict[str, dict[str, Any]] | None:
    """Rope parameters keyed by layer type, for configs where local and global layers differ (Gemma 3).

    transformers 5 nests them in ``rope_parameters`` ({"full_attention": {...}, "sliding_attention": {...}});
    transformers 4 Gemma 3 configs give ``rope_local_base_freq`` for the sliding layers (default rope there) and
    ``rope_theta`` / ``rope_scaling`` for the global ones. None when every layer uses the same rope.
    """
    params = getattr(hf_config, "rope_parameters", None) or {}
    nested = {key: dict(value) for key, value in params.items() if isinstance(value, dict)}
    if nested:
        return nested
    local_theta = getattr(hf_config, "rope_local_base_freq", None)
    if local_theta is None:
        return None
    return {
        "full_attention": _rope_parameters(hf_config),
        "sliding_attention": {"rope_type": "default", "rope_theta": float(local_theta)},
    }


@dataclass(frozen=True)
class ModelConfig:
    """The facts about a checkpoint that sglkit's models, runner and KV pool need, derived in one place."""

    architectures: tuple[str, ...]
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int  # == num_attention_heads for MHA configs that omit it
    head_dim: int  # the config's head_dim, else hidden_size // num_attention_heads
    intermediate_size: int | None
    context_len: int  # max_position_embeddings (DEFAULT_CONTEXT_LEN when absent)
    # Rope of every layer; with rope_parameters_by_layer_type, the one of the full-attention layers.
    rope_parameters: dict[str, Any] = field(default_factory=dict)
    # Layer type -> rope parameters, when local and global layers differ (Gemma 3); see layer_rope_parameters.
    rope_parameters_by_layer_type: dict[str, dict[str, Any]] | None = None
    sliding_window: int | None = None  # attention window of the checkpoint; None = full attention
    # Per-layer attention kind ("sliding_attention" / "full_attention" ...), when the config lists one.
    layer_types: tuple[str, ...] | None = None
    tie_word_embeddings: bool = False
    dtype: torch.dtype | None = None  # the checkpoint's dtype, when recorded
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    hf_config: Any = field(default=None, compare=False, repr=False)

    @classmethod
    def from_hf(cls, hf_config: Any) -> ModelConfig:
        """Normalise a transformers ``PretrainedConfig`` (or any object with the same attributes).

        A ModelConfig is returned as is, so models may be built from either.
        """
        if isinstance(hf_config, ModelConfig):
            return hf_config
        num_heads = hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
        window = getattr(hf_config, "sliding_window", None)
        rope_by_type = _rope_parameters_by_layer_type(hf_config)
        # Gemma configs name it hidden_activation (HF Gemma reads that one; hidden_act may be stale).
        act = getattr(hf_config, "hidden_activation", None) or getattr(hf_config, "hidden_act", None)
        rope = _rope_parameters(hf_config) if rope_by_type is None else rope_by_type.get("full_attention", {})
        if window is not None and getattr(hf_config, "use_sliding_window", True) is False:
            window = None  # Qwen2 configs carry a window they do not use
        return cls(
            architectures=tuple(getattr(hf_config, "architectures", None) or ()),
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
            head_dim=int(head_dim),
            intermediate_size=getattr(hf_config, "intermediate_size", None),
            context_len=int(getattr(hf_config, "max_position_embeddings", None) or DEFAULT_CONTEXT_LEN),
            rope_parameters=rope,
            rope_parameters_by_layer_type=rope_by_type,
            sliding_window=window,
            layer_types=tuple(getattr(hf_config, "layer_types", None) or ()) or None,
            tie_word_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)),
            dtype=config_dtype(hf_config),
            rms_norm_eps=float(getattr(hf_config, "rms_norm_eps", 1e-6) or 1e-6),
            hidden_act=act or "silu",
            hf_config=hf_config,
        )

    def layer_sliding_window(self, layer_id: int) -> int | None:
        """The attention window of layer ``layer_id``; None for full attention.

        With ``layer_types`` (Gemma 2/3 alternate local and global layers; Qwen2 windows some layers), only
        "sliding_attention" layers have the window; without them every layer has it (Mistral, Phi-3).
        """
        if self.sliding_window is None:
            return None
        if self.layer_types is None:
            return self.sliding_window
        return self.sliding_window if self.layer_types[layer_id] == "sliding_attention" else None

    def layer_rope_parameters(self, layer_id: int) -> dict[str, Any]:
        """The rope parameters of layer ``layer_id``: its layer type's entry, else ``rope_parameters``."""
        if self.rope_parameters_by_layer_type is None:
            return self.rope_parameters
        layer_type = self.layer_types[layer_id] if self.layer_types else "full_attention"
        if layer_type not in self.rope_parameters_by_layer_type:
            raise ValueError(
                f"The config gives rope parameters for layer types {sorted(self.rope_parameters_by_layer_type)}, "
                f"not for layer {layer_id}'s type {layer_type!r}."
            )
        return self.rope_parameters_by_layer_type[layer_type]

    @property
    def q_size(self) -> int:
        """Width of the query projection: num_attention_heads * head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of each of the key and value projections: num_key_value_heads * head_dim."""
        return self.num_key_value_heads * self.head_dim
