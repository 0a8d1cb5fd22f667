"""Attention backends behind one interface; ``create_attention_backend`` picks one by name.

GPU backends import their optional packages (triton, flashinfer) only inside this factory: ``import sglkit``
never imports triton or flashinfer. ``auto`` (or None) picks ``triton`` on CUDA when triton is installed, else
``torch_native``; on CPU ``triton`` runs only under Triton's interpreter (``TRITON_INTERPRET=1``, for tests).
"""

from __future__ import annotations

import importlib.util
import os

from sglkit.layers.attention.base import AttentionBackend, RadixAttention

__all__ = ["AttentionBackend", "RadixAttention", "create_attention_backend", "ATTENTION_BACKENDS"]

ATTENTION_BACKENDS = ("torch_native", "triton", "flashinfer")


def _is_cuda(device) -> bool:
    return str(device).startswith("cuda")


def resolve_attention_backend(name: str | None, device) -> str:
    """The backend ``name`` means on ``device``: None/"auto" -> triton on CUDA (if installed), else torch_native."""
    if name in (None, "auto"):
        if _is_cuda(device) and importlib.util.find_spec("triton") is not None:
            return "triton"
        return "torch_native"
    return name


def create_attention_backend(name: str | None, device) -> AttentionBackend:
    """Return the attention backend called ``name`` for ``device`` (see ``resolve_attention_backend``)."""
    name = resolve_attention_backend(name, device)
    if name == "torch_native":
        from sglkit.layers.attention.torch_native import TorchNativeAttnBackend

        return TorchNativeAttnBackend()
    if name == "triton":
        if not _is_cuda(device) and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError(
                f"attention_backend='triton' needs a CUDA device (got {device}); on CPU it runs only under "
                "Triton's interpreter (set TRITON_INTERPRET=1 before starting; slow, for tests). "
                "Use 'torch_native' on CPU."
            )
        if importlib.util.find_spec("triton") is None:
            raise ValueError(
                "attention_backend='triton' needs the triton package: pip install 'sglkit[gpu]'."
            )
        from sglkit.layers.attention.triton_backend import TritonAttnBackend

        return TritonAttnBackend(device)
    if name == "flashinfer":
        if not _is_cuda(device):
            raise ValueError(
                f"attention_backend='flashinfer' needs a CUDA device; use 'torch_native' on {device}."
            )
        if importlib.util.find_spec("flashinfer") is None:
            from sglkit.layers.attention.flashinfer_backend import FLASHINFER_MISSING

            raise ValueError(FLASHINFER_MISSING)
        from sglkit.layers.attention.flashinfer_backend import FlashInferAttnBackend

        return FlashInferAttnBackend(device)
    raise ValueError(f"Unknown attention_backend {name!r}; choose one of {ATTENTION_BACKENDS}.")
