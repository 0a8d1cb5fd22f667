"""Model layers: RMSNorm with an optional fused residual add (decoder layer -> norm -> attention/MLP).

Numerics follow HF Llama: normalize in float32, cast back to the input dtype, then multiply by the weight.
A decoder layer takes its norm class as an argument (``norm_cls(hidden_size, eps, dtype=...)``), so a variant
with the same call convention plugs in without touching the layer: ``Float32WeightRMSNorm`` multiplies by the
weight in float32 before the cast (HF OLMo 2), ``GemmaRMSNorm`` likewise by ``(1 + weight)`` (HF Gemma 2 / 3).
``ShardedRMSNorm`` normalises a width split across tensor-parallel ranks (OLMo 2's q/k norm over all heads): the
sum of squares is all-reduced, so the mean covers the full width exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from sglkit.layers.cpu_kernels import fused_ops as cpu_fused_ops
from sglkit.layers.cpu_kernels.fused_ops import cpu_fused_ops_enabled
from sglkit.layers.triton_fused import fused_ops_enabled
from sglkit.layers.weight_loader import copy_weight, default_weight_loader, set_weight_loader, shard_tensor
from sglkit.parallel import tensor_model_parallel_all_reduce

__all__ = ["Float32WeightRMSNorm", "GemmaRMSNorm", "RMSNorm", "ShardedRMSNorm"]


def _cpu_fused_takes(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the fused C++ norm runs: bfloat16 x and weight. In float32 the torch code stays, bit-equal to HF's
    (the fused pass sums the squares in another order, which moves float32 results by an ulp)."""
    return x.dtype == torch.bfloat16 and weight.dtype == x.dtype and cpu_fused_ops_enabled(x)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, with a learned per-channel weight.

    On CUDA ``forward`` runs one fused Triton kernel (``sglkit.layers.triton_fused``) with the same numerics, on
    an AVX-512 CPU one C++ pass for bfloat16 (``sglkit.layers.cpu_kernels.fused_ops``);
    ``fused_weight_mode`` says which ("cast": cast then multiply by the weight; "float32": multiply by
    ``weight_offset + weight`` in float32; None: a subclass with other math, always the torch code).
    """

    fused_weight_mode: str | None = "cast"
    weight_offset = 0.0

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))
        set_weight_loader(self.weight, default_weight_loader)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., H] -> [..., H] normalized (float32 math), times weight."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: [..., H] -> normed [..., H]; with ``residual``: (norm(x + residual), x + residual)."""
        if self.fused_weight_mode is not None:
            weight_in_float32 = self.fused_weight_mode == "float32"
            if fused_ops_enabled(x):
                from sglkit.layers.triton_fused.rmsnorm import rms_norm

                return rms_norm(x, self.weight, self.eps, residual, weight_in_float32, self.weight_offset)
            if _cpu_fused_takes(x, self.weight):
                return cpu_fused_ops.rms_norm(
                    x, self.weight, self.eps, residual, weight_in_float32, self.weight_offset
                )
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x

    def extra_repr(self) -> str:
        """Size and eps, for ``print(model)``."""
        return f"{self.hidden_size}, eps={self.eps}"


class Float32WeightRMSNorm(RMSNorm):
    """RMSNorm whose weight multiply happens in float32, before the cast back to the input dtype (HF OLMo 2).

    ``weight_offset`` is added to the weight first (0 here; 1 for Gemma's zero-centred weights).
    """

    fused_weight_mode = "float32"

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., H] -> [..., H]: x * rsqrt(mean(x^2) + eps) * (offset + weight), all in float32, then cast."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        weight = self.weight.float()
        if self.weight_offset:
            weight = self.weight_offset + weight
        return (x32 * weight).to(x.dtype)


class GemmaRMSNorm(Float32WeightRMSNorm):
    """Gemma's RMSNorm: scales by ``(1 + weight)`` in float32 (weights are stored zero-centred; init 0)."""

    weight_offset = 1.0

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype: torch.dtype | None = None) -> None:
        super().__init__(hidden_size, eps, dtype)
        nn.init.zeros_(self.weight)  # the identity, as HF initialises it


class ShardedRMSNorm(Float32WeightRMSNorm):
    """``Float32WeightRMSNorm`` over a width split across the tp ranks; this rank holds ``hidden_size`` of it.

    The full width is ``num_shards`` distinct shards of ``hidden_size``; this rank holds shard ``shard_rank``
    (the rows of the weight it loads). With ``tp_size`` > ``num_shards`` shards are replicated (KV heads shared by
    several ranks): each distinct shard then appears tp_size / num_shards times in the all-reduce, so
    mean(x^2) over the full width = all_reduce(sum of local x^2) / (hidden_size * tp_size) in every case.
    """

    def __init__(
        self,
        hidden_size: int,
        eps: float = 1e-6,
        dtype: torch.dtype | None = None,
        shard_rank: int = 0,
        num_shards: int = 1,
        tp_size: int = 1,
    ) -> None:
        super().__init__(hidden_size, eps, dtype)
        if tp_size % num_shards:
            raise ValueError(f"{num_shards} shards cannot be spread evenly over tp_size={tp_size} ranks.")
        self.shard_rank = shard_rank
        self.num_shards = num_shards
        self.tp_size = tp_size
        if tp_size > 1:
            self.fused_weight_mode = None  # the all-reduce of the sum of squares: torch code only
        set_weight_loader(self.weight, self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """Copy this rank's shard of the full-width [num_shards * hidden_size] weight."""
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} has no shards; got shard_id={shard_id!r}.")
        copy_weight(param.data, shard_tensor(loaded_weight, 0, self.shard_rank, self.num_shards))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., hidden_size] (this rank's part of the width) -> [..., hidden_size], normalised over all ranks."""
        if self.tp_size == 1:
            return super()._norm(x)
        x32 = x.float()
        sum_sq = tensor_model_parallel_all_reduce(x32.pow(2).sum(-1, keepdim=True))  # [..., 1]
        x32 = x32 * torch.rsqrt(sum_sq / (self.hidden_size * self.tp_size) + self.eps)
        return (x32 * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        """Size (this rank's), eps and sharding, for ``print(model)``."""
        shards = (
            f", shard={self.shard_rank}/{self.num_shards}, tp_size={self.tp_size}" if self.tp_size > 1 else ""
        )
        return f"{self.hidden_size}, eps={self.eps}{shards}"
