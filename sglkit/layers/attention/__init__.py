"""Attention backends behind one interface; ``create_attention_backend`` picks one by name.

GPU backends import their optional packages (triton, flashinfer) only inside this factory.
"""

from __future__ import annotations

from sglkit.layers.attention.base import AttentionBackend, RadixAttention

__all__ = ["AttentionBackend", "RadixAttention", "create_attention_backend", "ATTENTION_BACKENDS"]

ATTENTION_BACKENDS = ("torch_native", "triton", "flashinfer")


def create_attention_backend(name: str, device: str) -> AttentionBackend:
    """Return the attention backend called ``name`` for ``device`` (``None``/"auto" -> torch_native)."""
    if name in (None, "auto", "torch_native"):
        from sglkit.layers.attention.torch_native import TorchNativeAttnBackend

        return TorchNativeAttnBackend()
    if name in ("triton", "flashinfer"):
        if not str(device).startswith("cuda"):
            raise ValueError(
                f"attention_backend={name!r} needs a CUDA device; use 'torch_native' on {device}."
            )
        raise NotImplementedError(f"attention_backend={name!r} is not implemented yet; use 'torch_native'.")
    raise ValueError(f"Unknown attention_backend {name!r}; choose one of {ATTENTION_BACKENDS}.")
