"""Models: the transformers fallback (model runner -> TransformersForCausalLM -> HF layers -> RadixAttention).

Any decoder-only ``*ForCausalLM`` that transformers implements runs with its own transformers layers (embedding,
norms, rotary, MLP, LM head) while attention goes through sglkit: the HF model is built with
``attn_implementation="sglkit"``, an attention function registered with transformers' ``AttentionInterface``.
Each HF attention module calls it with its q/k/v ([1, H, T, D]); it writes K/V into our paged KV pool and
attends with the configured backend through one ``RadixAttention`` per layer, so the radix cache, chunked
prefill and the scheduler work unchanged. Tokens of all requests are packed as one [1, T] sequence whose
``position_ids`` are our positions; the ``ForwardBatch`` reaches the attention function as a keyword argument
of the HF model's forward (transformers passes ``**kwargs`` down to ``attention_interface(...)``). No HF KV
cache is made (``use_cache=False``), and no dense mask: transformers skips mask creation for an attention
implementation without a registered mask function, and causality / sliding windows come from the ForwardBatch.

Limits: models whose layers pass ``**kwargs`` down to attention (transformers marks them
``is_backend_compatible()``); causal self-attention only, no attention sinks (``s_aux``), no dropout; a layer's
sliding window, soft cap and scaling are what HF passes. Logits are the HF output head plus the
config's ``final_logit_softcapping`` / ``logit_scale`` / ``logits_scaling``. A folder loads through transformers
(``load_checkpoint``: its renames and conversions apply) and is copied in by ``state_dict`` names (strict,
``load_weights``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sglkit.core.forward_batch import ForwardBatch
from sglkit.core.model_config import ModelConfig
from sglkit.layers.attention.base import RadixAttention
from sglkit.parallel import get_tp_size

__all__ = [
    "AttentionState",
    "ATTENTION_IMPLEMENTATION",
    "TransformersForCausalLM",
    "causal_lm_architecture",
    "unsupported_reason",
]

ATTENTION_IMPLEMENTATION = "sglkit"  # the name registered with transformers' AttentionInterface
# Keyword arguments HF layers pass to attention functions that need nothing from us (causal self-attention).
_PASSIVE_KWARGS = frozenset({"position_ids", "use_cache", "cache_position", "output_attentions", "is_causal"})
# Buffers some checkpoints carry that the HF model recomputes (as sglkit.models.llama does).
_ROTARY_BUFFER_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")
_MAX_LISTED = 8
_LOADING_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys")  # from_pretrained's loading info


def causal_lm_architecture(architectures: Iterable[str]) -> str | None:
    """The first name in ``architectures`` that is a transformers causal-LM class (AutoModelForCausalLM's table)."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal_names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_names.update([value] if isinstance(value, str) else value)
    for name in architectures:
        if name in causal_names and hasattr(transformers, name):
            return name
    return None


def unsupported_reason(architectures: Iterable[str], hf_config: Any = None) -> str | None:
    """Why the fallback cannot run ``architectures`` (with ``hf_config``, when given); None when it can.

    It needs a transformers causal LM whose layers pass the forward's keyword arguments down to the attention
    function (transformers marks those ``is_backend_compatible()``, as vLLM's and SGLang's fallbacks require),
    and a config of that class's config type.
    """
    import transformers

    architectures = list(architectures)
    name = causal_lm_architecture(architectures)
    if name is None:
        return f"{architectures} are not causal-LM classes of the installed transformers."
    model_cls = getattr(transformers, name)
    if not model_cls.is_backend_compatible():
        return (
            f"transformers' {name} does not pass attention arguments through its layers "
            "(is_backend_compatible() is False), so its attention cannot run on sglkit's KV pool."
        )
    if hf_config is not None and not isinstance(hf_config, model_cls.config_class):
        return f"{name} needs a {model_cls.config_class.__name__}, but the config is a {type(hf_config).__name__}."
    return None


@dataclass
class AttentionState:
    """What the attention function reads besides the ForwardBatch (passed as the ``sglkit_attention`` kwarg).

    ``layers``: layer id -> RadixAttention, built on a layer's first call from what HF passes (no parameters);
    ``config``: the ModelConfig that sized the KV pool, to check those against.
    """

    config: ModelConfig
    layers: dict[int, RadixAttention] = field(default_factory=dict)

    def layer(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        scaling: float | None,
        sliding_window: int | None,
        softcap: float | None,
    ) -> RadixAttention:
        """The RadixAttention of ``module``'s layer for these options (built on first use, rebuilt on a change).

        query: [1, Hq, T, D], key: [1, Hkv, T, D]. ValueError when its K/V heads or head size differ from the
        config's (the KV pool's), or when the config gives the layer a window that HF does not pass (a model
        that applies its window only through the mask, which the fallback does not build).
        """
        layer_id = getattr(module, "layer_idx", None)
        if layer_id is None:
            raise ValueError(
                f"{type(module).__name__} has no layer_idx: sglkit cannot place its K/V in the pool."
            )
        num_heads, num_kv_heads, head_dim = query.shape[1], key.shape[1], query.shape[-1]
        spec = (num_heads, num_kv_heads, head_dim, head_dim**-0.5 if scaling is None else float(scaling))
        options = (sliding_window or None, softcap or None)
        layer = self.layers.get(layer_id)
        if layer is not None and (layer.num_heads, layer.num_kv_heads, layer.head_dim, layer.scaling) == spec:
            if (layer.sliding_window, layer.logit_cap) == options:
                return layer
        name, cfg = type(module).__name__, self.config
        if (num_kv_heads, head_dim, key.shape[-1]) != (cfg.num_key_value_heads, cfg.head_dim, cfg.head_dim):
            raise ValueError(
                f"Layer {layer_id} ({name}) has {num_kv_heads} K/V heads of size {key.shape[-1]}, but the KV pool "
                f"was sized from the config for {cfg.num_key_value_heads} heads of size {cfg.head_dim}: "
                "ModelConfig.from_hf reads this family's config wrongly."
            )
        expected_window = cfg.layer_sliding_window(layer_id)
        if options[0] is None and expected_window is not None:
            raise ValueError(
                f"The config gives layer {layer_id} a sliding window of {expected_window}, but {name} does not "
                "pass it to the attention function (transformers applies it through the mask only), so the "
                "transformers fallback cannot run this model."
            )
        layer = RadixAttention(layer_id, *spec, sliding_window=options[0], logit_cap=options[1])
        self.layers[layer_id] = layer
        return layer


def sglkit_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    softcap: float | None = None,
    forward_batch: ForwardBatch | None = None,
    sglkit_attention: AttentionState | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query: [1, Hq, T, D], key/value: [1, Hkv, T, D] -> ([1, T, Hq, D], None): the ``sglkit`` attention function.

    Writes this pass's K/V into the pool and attends over each request's cached + new tokens (the ForwardBatch
    defines causality and the per-request KV; ``attention_mask``, if HF built one, says nothing more).
    """
    if forward_batch is None or sglkit_attention is None:
        raise RuntimeError(
            f"{type(module).__name__} uses sglkit's paged attention: run it through "
            "TransformersForCausalLM.forward (which passes the ForwardBatch), not the HF model directly."
        )
    unsupported = set(kwargs) - _PASSIVE_KWARGS
    if unsupported or dropout or not getattr(module, "is_causal", True) or kwargs.get("is_causal") is False:
        reason = (
            f"attention arguments {sorted(unsupported)}" if unsupported else "non-causal or dropout attention"
        )
        raise ValueError(f"The transformers fallback does not support {reason} of {type(module).__name__}.")
    if query.shape[0] != 1:
        raise ValueError(f"Expected one packed sequence (batch 1), got query of shape {tuple(query.shape)}.")
    layer = sglkit_attention.layer(module, query, key, scaling, sliding_window, softcap)
    num_tokens = query.shape[2]
    q, k, v = (x[0].transpose(0, 1).reshape(num_tokens, -1) for x in (query, key, value))  # [T, H*D]
    out = layer(q, k, v, forward_batch)  # [T, Hq*D]
    return out.view(1, num_tokens, layer.num_heads, layer.head_dim), None


def register_attention() -> None:
    """Register ``sglkit_attention_forward`` with transformers under ATTENTION_IMPLEMENTATION (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_IMPLEMENTATION, sglkit_attention_forward)


def _no_init_weights() -> contextlib.AbstractContextManager:
    """transformers' context that skips random init (parameters are overwritten by the checkpoint)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # only slower: the random init runs and is then overwritten
        return contextlib.nullcontext()
    return no_init_weights()


class TransformersForCausalLM(nn.Module):
    """A transformers causal LM whose attention runs on sglkit's KV pool; the model runner's model interface.

    ``forward(input_ids, positions, forward_batch)`` -> hidden [T, H]; ``compute_logits`` -> [N, V] float32;
    ``load_weights`` takes HF-named tensors. ``hf_model`` is the transformers model (its parameters are ours).
    """

    implementation = "transformers"  # what the loader logs (sglkit's own models: "sglkit")

    def __init__(self, config: Any, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        if get_tp_size() > 1:
            raise ValueError(
                f"The transformers fallback (model_impl='transformers') does not support tensor parallelism "
                f"(tp_size={get_tp_size()}); use tp_size=1 or a model sglkit implements."
            )
        model_config = ModelConfig.from_hf(config)
        if model_config.hf_config is None:
            raise ValueError(
                "The transformers fallback needs the transformers config (ModelConfig.hf_config)."
            )
        reason = unsupported_reason(model_config.architectures, model_config.hf_config)
        if reason is not None:
            raise ValueError(f"The transformers fallback cannot run this model: {reason}")
        architecture = causal_lm_architecture(model_config.architectures)
        self.model_config = model_config
        self.dtype = dtype or torch.get_default_dtype()
        hf_config = copy.deepcopy(model_config.hf_config)  # from_config sets _attn_implementation on it
        self.config = hf_config
        register_attention()
        with _no_init_weights():
            self.hf_model = AutoModelForCausalLM.from_config(
                hf_config, dtype=self.dtype, attn_implementation=ATTENTION_IMPLEMENTATION
            )
        if type(self.hf_model).__name__ != architecture:
            raise ValueError(
                f"transformers built {type(self.hf_model).__name__} for architecture {architecture}."
            )
        self.hf_model.tie_weights()  # skipped with the random init
        self.hf_model.eval()
        if self.hf_model.get_output_embeddings() is None:
            raise ValueError(f"{architecture} has no output embeddings (LM head).")
        # Applied to the head's output, as the HF causal LM's forward does (Gemma 2/3, Cohere, Granite).
        self.final_logit_softcapping: float | None = getattr(hf_config, "final_logit_softcapping", None)
        self.logit_scale: float | None = getattr(hf_config, "logit_scale", None)
        self.logits_scaling: float | None = getattr(hf_config, "logits_scaling", None)
        self.attention = AttentionState(model_config)  # the RadixAttention of each layer, built on first use

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch
    ) -> torch.Tensor:
        """input_ids, positions: [T] (packed requests) -> hidden states [T, H] (the decoder stack's final norm)."""
        outputs = self.hf_model.base_model(
            input_ids=input_ids[None],  # [1, T]
            position_ids=positions[None],  # [1, T]
            use_cache=False,
            forward_batch=forward_batch,
            sglkit_attention=self.attention,
        )
        return outputs[0][0]  # last_hidden_state [1, T, H] -> [T, H]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, H] -> logits [N, V] float32 (HF output head, then the config's scaling / soft cap)."""
        logits = self.hf_model.get_output_embeddings()(hidden).float()
        if self.logit_scale is not None:
            logits = logits * self.logit_scale
        if self.logits_scaling is not None:
            logits = logits / self.logits_scaling
        if self.final_logit_softcapping is not None:
            cap = self.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits

    def load_checkpoint(self, model_path: str | os.PathLike) -> None:
        """Load a local folder's safetensors with transformers' own loading, then copy them in (``load_weights``).

        transformers reads the checkpoint on CPU (local files only), applying its renames of legacy names
        (GPT-NeoX's ``embed_out`` -> ``lm_head``) and its conversions (fused MoE experts). Strict: ValueError for
        any missing, unexpected or mismatched tensor it reports, or for another architecture.
        """
        from transformers import AutoModelForCausalLM

        loaded, info = AutoModelForCausalLM.from_pretrained(
            str(model_path),
            local_files_only=True,
            use_safetensors=True,
            dtype=self.dtype,
            output_loading_info=True,
        )
        problems = [f"{kind} {sorted(map(str, info[kind]))}" for kind in _LOADING_PROBLEMS if info.get(kind)]
        if problems:
            raise ValueError(
                f"transformers could not load {str(model_path)!r} strictly: {'; '.join(problems)}."
            )
        if type(loaded) is not type(self.hf_model):
            raise ValueError(
                f"{str(model_path)!r} holds {type(loaded).__name__}, not {type(self.hf_model).__name__}."
            )
        self.load_weights(loaded.state_dict().items())

    def _target_name(self, name: str, targets: dict[str, torch.Tensor]) -> str | None:
        """The HF state_dict name of checkpoint tensor ``name``; None to skip it; ValueError if it fits nothing."""
        if name in targets:
            return name
        prefixed = f"{self.hf_model.base_model_prefix}.{name}"  # saved from the base model
        if prefixed in targets:
            return prefixed
        ignored = self.hf_model._keys_to_ignore_on_load_unexpected or ()
        if name.endswith(_ROTARY_BUFFER_SUFFIXES) or any(re.search(p, name) for p in ignored):
            return None
        raise ValueError(f"Unexpected weight {name!r} in checkpoint for {type(self.hf_model).__name__}.")

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copy HF-named checkpoint tensors into the HF model; the state_dict names loaded.

        Strict: ValueError for a tensor with no parameter / persistent buffer of that name (except the HF class's
        ``_keys_to_ignore_on_load_unexpected`` and rotary buffers), for a shape mismatch, and listing every
        parameter / persistent buffer never provided (a tied LM head counts as provided with its embedding).
        Checkpoints whose names transformers converts while loading (e.g. fused MoE experts) are refused.
        """
        targets = self.hf_model.state_dict(keep_vars=True)  # name -> Parameter / buffer (tied names included)
        loaded_ids: set[int] = set()
        loaded: set[str] = set()
        for name, tensor in weights:
            target_name = self._target_name(name, targets)
            if target_name is None:
                continue
            target = targets[target_name]
            if tuple(tensor.shape) != tuple(target.shape):
                raise ValueError(
                    f"Checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, but {target_name} of "
                    f"{type(self.hf_model).__name__} has shape {tuple(target.shape)}."
                )
            target.copy_(tensor)
            loaded_ids.add(id(target))
            loaded.add(target_name)
        ignored = self.hf_model._keys_to_ignore_on_load_missing or ()
        missing = sorted(
            n
            for n, t in targets.items()
            if id(t) not in loaded_ids and not any(re.search(p, n) for p in ignored)
        )
        if missing:
            shown = ", ".join(missing[:_MAX_LISTED])
            if len(missing) > _MAX_LISTED:
                shown += f", ... ({len(missing)} in all)"
            raise ValueError(
                f"Checkpoint did not provide these parameters of {type(self.hf_model).__name__}: {shown}."
            )
        return loaded
