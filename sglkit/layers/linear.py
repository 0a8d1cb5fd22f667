"""Linear layers of sglkit models, each owning the ``weight_loader`` of its parameters (checkpoint -> layer).

==========================  ==========================  =============================================
class                       weight [out, in] per rank   loader (shard ids)
==========================  ==========================  =============================================
Linear                      full                        whole-tensor copy (replicated)
ColumnParallelLinear        rows out / tp_size          this rank's rows (bias too)
RowParallelLinear           columns in / tp_size        this rank's columns (bias whole)
MergedColumnParallelLinear  rows of several outputs     output ``i`` into its rows (0, 1, ... e.g. gate/up)
QKVParallelLinear           q, k, v rows of its heads   "q", "k", "v" into their rows
==========================  ==========================  =============================================

The parallel layers take ``tp_rank`` / ``tp_size`` from ``sglkit.parallel`` (``get_tp_rank()`` / ``get_tp_size()``)
unless given, so a model built after ``initialize_model_parallel`` is this rank's share with no plumbing; a
plain ``Linear`` is replicated. Each loader keeps only this rank's slice of the full checkpoint tensor. The one
collective here: ``RowParallelLinear`` all-reduces (sums) the ranks' partial outputs, then adds its bias once
(``reduce_results=False`` leaves the sum to the caller, who may fuse several partial sums into one all-reduce).
A fused parameter also accepts the whole fused tensor (``shard_id=None``: Phi-3 checkpoints, our own state_dict
as ``update_weights`` re-reads it): with tp_size > 1 it is split into its sections, each loaded as its shard.

After loading, each ``Linear`` hands its weight to its *linear method* (``sglkit.layers.quantization``): the model
runner calls ``pack_linear_weights(model)`` after every weight change, and the default method
(``PackedLinearMethod``) reorders a CPU weight into oneDNN's blocked layout for ``mkldnn._linear_pointwise`` (float32
everywhere; bfloat16 on AVX-512 / AVX-NE-CONVERT CPUs), else keeps it for ``F.linear``. ``quantize_linear_weights(
model, "int8wo" | "int4wo-G")`` (SGLang's ``--torchao-config``) gives the "proj" layers int8 / int4 weight-only
methods instead. A method that replaces the weight frees the plain copy (every weight is held once): ``weight``
keeps its shape and dtype for the loaders, ``state_dict`` returns ``dense_weight()`` (unpacked / dequantized),
and loading into the layer (``param.weight_loader``, ``load_state_dict``) first turns it back into a plain
weight, so ``update_weights`` re-loads and the next ``pack_linear_weights`` re-processes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from sglkit.layers.quantization import (
    LinearMethod,
    PackedLinearMethod,
    create_linear_method,
    should_quantize,
    validate_torchao_config,
)
from sglkit.layers.weight_loader import copy_weight, set_weight_loader, shard_tensor
from sglkit.parallel import get_tp_rank, get_tp_size, tensor_model_parallel_all_reduce

logger = logging.getLogger(__name__)

__all__ = [
    "ColumnParallelLinear",
    "Linear",
    "MergedColumnParallelLinear",
    "QKVParallelLinear",
    "RowParallelLinear",
    "dense_parameter",
    "linear_weight_bytes",
    "pack_linear_weights",
    "quantize_linear_weights",
]


def divide(numerator: int, denominator: int) -> int:
    """numerator // denominator; ValueError unless it divides exactly."""
    if numerator % denominator:
        raise ValueError(f"{numerator} is not divisible by tp_size={denominator}.")
    return numerator // denominator


def resolve_tp(tp_rank: int | None, tp_size: int | None) -> tuple[int, int]:
    """(tp_rank, tp_size): the given values, else this process's parallel state (0 of 1 without one)."""
    return (get_tp_rank() if tp_rank is None else tp_rank), (get_tp_size() if tp_size is None else tp_size)


class Linear(nn.Module):
    """y = x W^T + b with a replicated weight [out, in]; x: [..., in] -> [..., out].

    Parameters are created with ``torch.empty`` on the current default device (the loader fills them), named
    ``weight`` / ``bias`` like ``nn.Linear``. ``linear_method`` (default: oneDNN packing where it runs) takes the
    weight over in ``process_weights_after_loading``.
    """

    compiled_handle: int | None = None  # its number for torch.compile's op (layers.compiled_ops)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        tp_rank: int = 0,
        tp_size: int = 1,
    ) -> None:
        super().__init__()
        self.in_features = in_features  # this rank's sizes
        self.out_features = out_features
        self.tp_rank = tp_rank
        self.tp_size = tp_size
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype)) if bias else None
        self.linear_method: LinearMethod = PackedLinearMethod()
        set_weight_loader(self.weight, self.load_weight)
        set_weight_loader(self.bias, self.load_weight)
        self.register_state_dict_post_hook(_dense_weight_in_state_dict)
        self.register_load_state_dict_pre_hook(_release_before_load_state_dict)

    def load_weight(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """``param.weight_loader`` of both: a processed weight turns plain again, then ``weight_loader`` copies."""
        if param is self.weight:
            self.linear_method.release(self)
        self.weight_loader(param, loaded_weight, shard_id)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """Replicated: copy the whole checkpoint tensor (no shards)."""
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} has no shards; got shard_id={shard_id!r}.")
        copy_weight(param.data, loaded_weight)

    def process_weights_after_loading(self) -> bool:
        """Hand the loaded weight to ``linear_method`` (pack or quantize it, freeing the plain copy); True if it did."""
        return self.linear_method.process_weights_after_loading(self)

    def set_linear_method(self, method: LinearMethod) -> None:
        """Use ``method`` from now on (unprocessed: call ``process_weights_after_loading``); the current method's
        form, if any, is turned back into the plain weight first."""
        self.linear_method.restore(self)
        self.linear_method = method

    def dense_weight(self) -> torch.Tensor:
        """The weight as a plain [out, in] tensor: ``weight``, or unpacked / dequantized from the method's form."""
        return self.linear_method.dense_weight(self)

    @property
    def packed_weight(self) -> torch.Tensor | None:
        """The oneDNN-blocked (MKLDNN) weight while the packed method holds one, else None (fused oneDNN ops)."""
        held = self.linear_method.packed if isinstance(self.linear_method, PackedLinearMethod) else None
        return held if isinstance(held, torch.Tensor) and self.linear_method.processed else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out]."""
        return self.matmul(x, self.bias)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [..., in] -> x W^T (+ bias): [..., out], by the layer's linear method."""
        return self.linear_method.apply(self, x, bias)

    def extra_repr(self) -> str:
        """Sizes (this rank's) and tensor-parallel placement, for ``print(model)``."""
        tp = f", tp_rank={self.tp_rank}, tp_size={self.tp_size}" if self.tp_size > 1 else ""
        method = self.linear_method.name if self.linear_method.processed else "dense"
        sizes = (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )
        return f"{sizes}{tp}, method={method}"


class ColumnParallelLinear(Linear):
    """Output dimension split across ranks: rank r holds rows [r * out/tp, (r + 1) * out/tp) of W and b."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        tp_rank, tp_size = resolve_tp(tp_rank, tp_size)
        super().__init__(input_size, divide(output_size, tp_size), bias, dtype, tp_rank, tp_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """Copy this rank's rows of the full [out, in] weight (or [out] bias)."""
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} has no shards; got shard_id={shard_id!r}.")
        copy_weight(param.data, shard_tensor(loaded_weight, 0, self.tp_rank, self.tp_size))


class RowParallelLinear(Linear):
    """Input dimension split across ranks: rank r holds columns [r * in/tp, (r + 1) * in/tp) of W; b whole.

    x: [..., in / tp] (this rank's share, e.g. its heads' attention output) -> [..., out]: with tp_size > 1 the
    ranks' partial products are all-reduced and the bias is added once, after the sum. ``reduce_results=False``
    returns this rank's partial sum without bias (the caller reduces; a bias is then refused).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        tp_rank: int | None = None,
        tp_size: int | None = None,
        reduce_results: bool = True,
    ) -> None:
        tp_rank, tp_size = resolve_tp(tp_rank, tp_size)
        if bias and not reduce_results:
            raise ValueError("RowParallelLinear with reduce_results=False cannot add its bias after the sum.")
        self.reduce_results = reduce_results
        super().__init__(divide(input_size, tp_size), output_size, bias, dtype, tp_rank, tp_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in / tp] -> [..., out]: summed over the ranks (unless ``reduce_results`` is off), plus bias."""
        if self.tp_size == 1:
            return self.matmul(x, self.bias)
        out = self.matmul(x, None)  # [..., out], this rank's partial sum
        if not self.reduce_results:
            return out
        out = tensor_model_parallel_all_reduce(out)
        return out if self.bias is None else out + self.bias

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """Copy this rank's columns of the full [out, in] weight; the [out] bias is replicated."""
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} has no shards; got shard_id={shard_id!r}.")
        if param is self.weight:
            loaded_weight = shard_tensor(loaded_weight, 1, self.tp_rank, self.tp_size)
        copy_weight(param.data, loaded_weight)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs fused into one GEMM (e.g. gate and up: ``output_sizes=[I, I]``).

    Checkpoint shard ``i`` (0, 1, ...) fills rows [sum(sizes[:i]) / tp, sum(sizes[:i + 1]) / tp) of this rank.
    """

    def __init__(
        self,
        input_size: int,
        output_sizes: Sequence[int],
        bias: bool = True,
        dtype: torch.dtype | None = None,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        tp_rank, tp_size = resolve_tp(tp_rank, tp_size)
        self.output_sizes = list(output_sizes)  # full (all-rank) size of each output
        for size in self.output_sizes:
            divide(size, tp_size)
        super().__init__(input_size, sum(self.output_sizes), bias, dtype, tp_rank, tp_size)

    @property
    def shard_ids(self) -> tuple[int, ...]:
        """The shard ids a checkpoint must provide: 0 .. len(output_sizes) - 1."""
        return tuple(range(len(self.output_sizes)))

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: int | None = None
    ) -> None:
        """Output ``shard_id`` into its rows (this rank's slice); None: the whole fused tensor."""
        if shard_id is None:
            if self.tp_size == 1:
                copy_weight(param.data, loaded_weight)
                return
            for i, part in enumerate(_split_rows(loaded_weight, self.output_sizes)):
                self.weight_loader(param, part, i)
            return
        if shard_id not in self.shard_ids:
            raise ValueError(f"{type(self).__name__} has shards {self.shard_ids}; got {shard_id!r}.")
        offset = divide(sum(self.output_sizes[:shard_id]), self.tp_size)
        size = divide(self.output_sizes[shard_id], self.tp_size)
        dst = param.data.narrow(0, offset, size)
        copy_weight(dst, shard_tensor(loaded_weight, 0, self.tp_rank, self.tp_size))


class QKVParallelLinear(Linear):
    """Fused q/k/v projection: rows [q | k | v] of this rank's heads; x: [T, hidden] -> [T, (Hq + 2 Hkv) D].

    Query heads are split across ranks; KV heads too, or replicated when tp_size exceeds their number (rank r
    then holds KV head r // (tp_size / num_kv_heads)). Checkpoint shards are "q", "k", "v".
    """

    shard_ids = ("q", "k", "v")

    def __init__(
        self,
        hidden_size: int,
        head_dim: int,
        total_num_heads: int,
        total_num_kv_heads: int | None = None,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        tp_rank: int | None = None,
        tp_size: int | None = None,
    ) -> None:
        tp_rank, tp_size = resolve_tp(tp_rank, tp_size)
        total_num_kv_heads = total_num_kv_heads or total_num_heads
        self.head_dim = head_dim
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads
        self.num_heads = divide(total_num_heads, tp_size)
        if tp_size >= total_num_kv_heads:
            self.num_kv_heads, self.num_kv_replicas = 1, divide(tp_size, total_num_kv_heads)
        else:
            self.num_kv_heads, self.num_kv_replicas = divide(total_num_kv_heads, tp_size), 1
        self.q_size = self.num_heads * head_dim  # this rank's widths
        self.kv_size = self.num_kv_heads * head_dim
        out = self.q_size + 2 * self.kv_size
        super().__init__(hidden_size, out, bias, dtype, tp_rank, tp_size)

    def shard_rows(self, shard_id: str) -> tuple[int, int]:
        """(offset, size) of shard "q" / "k" / "v" in this rank's rows."""
        if shard_id not in self.shard_ids:
            raise ValueError(f"{type(self).__name__} has shards {self.shard_ids}; got {shard_id!r}.")
        q, kv = self.q_size, self.kv_size
        return {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}[shard_id]

    def weight_loader(
        self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str | None = None
    ) -> None:
        """Shard "q" / "k" / "v" into its rows (this rank's heads); None: the whole fused tensor."""
        if shard_id is None:
            if self.tp_size == 1:
                copy_weight(param.data, loaded_weight)
                return
            kv_total = self.total_num_kv_heads * self.head_dim
            sizes = [self.total_num_heads * self.head_dim, kv_total, kv_total]
            for sid, part in zip(self.shard_ids, _split_rows(loaded_weight, sizes), strict=True):
                self.weight_loader(param, part, sid)
            return
        offset, size = self.shard_rows(shard_id)
        if shard_id == "q":
            src = shard_tensor(loaded_weight, 0, self.tp_rank, self.tp_size)
        else:
            num_parts = self.tp_size // self.num_kv_replicas
            src = shard_tensor(loaded_weight, 0, self.tp_rank // self.num_kv_replicas, num_parts)
        copy_weight(param.data.narrow(0, offset, size), src)


def _split_rows(loaded_weight: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """A whole fused tensor [sum(sizes), ...] -> its outputs' rows; ValueError on another row count."""
    if loaded_weight.shape[0] != sum(sizes):
        raise ValueError(
            f"Fused checkpoint tensor of shape {tuple(loaded_weight.shape)} does not have {sum(sizes)} rows."
        )
    return loaded_weight.split(list(sizes), dim=0)


def _dense_weight_in_state_dict(module: Linear, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: the plain weight (unpacked / dequantized) in place of a freed placeholder."""
    key = prefix + "weight"
    if module.linear_method.processed and key in state_dict:
        state_dict[key] = module.dense_weight()


def _release_before_load_state_dict(module: Linear, state_dict: dict, prefix: str, *args) -> None:
    """load_state_dict pre-hook: a plain weight to copy into (re-process afterwards)."""
    if prefix + "weight" in state_dict:
        module.linear_method.release(module)


def pack_linear_weights(model: nn.Module) -> int:
    """Process every ``Linear`` of ``model`` by its linear method (call after loading or changing weights): pack
    for oneDNN by default, re-quantize a quantized layer; returns how many hold their weight in a method's form.
    The model's ``logits_head`` (when it has one) also gets its oneDNN copy for the logits (``pack_for_logits``)."""
    processed = sum(m.process_weights_after_loading() for m in model.modules() if isinstance(m, Linear))
    head = getattr(model, "logits_head", None)
    if getattr(model, "has_lm_head", True) and hasattr(head, "pack_for_logits"):
        head.pack_for_logits()
    return processed


def quantize_linear_weights(model: nn.Module, torchao_config: str | None) -> int:
    """Quantize the "proj" linears of a loaded ``model`` by SGLang's ``--torchao-config`` value ("int8wo",
    "int4wo-32/64/128/256"; "" / None: nothing); returns how many were quantized. Each keeps its method, so
    later weight loads are quantized again by ``pack_linear_weights``. ValueError for other values or devices."""
    if not torchao_config:
        return 0
    device = next(model.parameters()).device
    validate_torchao_config(torchao_config, str(device))
    chosen = [m for name, m in model.named_modules() if isinstance(m, Linear) and should_quantize(name)]
    quantized = 0
    for module in chosen:
        module.set_linear_method(create_linear_method(torchao_config))
        quantized += module.process_weights_after_loading()
    if quantized < len(chosen):
        logger.warning(
            f"torchao_config={torchao_config}: {len(chosen) - quantized} of {len(chosen)} proj linears kept "
            "their dtype (shape the kernel cannot take)."
        )
    logger.info(f"torchao_config={torchao_config}: quantized {quantized} linear layers.")
    return quantized


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes the ``Linear`` layers of ``model`` hold for their weights (plain, packed or quantized; no bias)."""
    return sum(m.linear_method.weight_bytes(m) for m in model.modules() if isinstance(m, Linear))


def dense_parameter(model: nn.Module, name: str) -> torch.Tensor:
    """Parameter ``name`` of ``model`` with its real values (for /get_weights_by_name and the like): a processed
    ``Linear`` weight is unpacked / dequantized (its Parameter holds a placeholder), any other is the Parameter."""
    module_name, _, param_name = name.rpartition(".")
    module = model.get_submodule(module_name)
    if isinstance(module, Linear) and param_name == "weight":
        return module.dense_weight()
    return model.get_parameter(name)
