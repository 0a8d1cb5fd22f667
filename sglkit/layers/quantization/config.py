"""Model layers: SGLang's ``--torchao-config`` values -> the linear method each quantized layer gets.

SGLang passes the value to torchao; sglkit implements the weight-only ones itself, on CPU, without torchao:

===============  =========================================================================================
value            what each quantized linear holds (see ``int8`` / ``int4``)
===============  =========================================================================================
"" (default)     nothing quantized
int8wo           int8 weight, one scale per output channel
int4wo-G         int4 weight, one scale and zero per group of G = 32, 64, 128 or 256 input columns
===============  =========================================================================================

SGLang's other values (int8dq, fp8wo, fp8dq-per_tensor, fp8dq-per_row) quantize activations or need fp8
kernels: they are refused with a message naming the choices. Which layers: as SGLang's ``proj_filter``, every linear
whose qualified name contains "proj" (q/k/v/o, gate/up/down, fused qkv_proj / gate_up_proj); the LM head,
embeddings, MoE routers and classification heads keep their dtype.
"""

from __future__ import annotations

from sglkit.layers.quantization.base import LinearMethod
from sglkit.layers.quantization.int4 import GROUP_SIZES, Int4WeightOnlyMethod
from sglkit.layers.quantization.int8 import Int8WeightOnlyMethod

__all__ = [
    "TORCHAO_CONFIGS",
    "create_linear_method",
    "should_quantize",
    "validate_torchao_config",
]

TORCHAO_CONFIGS = ("int8wo", *(f"int4wo-{g}" for g in GROUP_SIZES))
SGLANG_ONLY_CONFIGS = ("int8dq", "fp8wo", "fp8dq-per_tensor", "fp8dq-per_row")


def validate_torchao_config(value: str | None, device: str = "cpu") -> None:
    """ValueError unless ``value`` is "" / None or one of ``TORCHAO_CONFIGS`` on a CPU device."""
    if not value:
        return
    if value not in TORCHAO_CONFIGS:
        known = " SGLang's torchao value, not implemented by sglkit." if value in SGLANG_ONLY_CONFIGS else ""
        raise ValueError(f"torchao_config must be one of {TORCHAO_CONFIGS} (or empty), got {value!r}.{known}")
    if not str(device).startswith("cpu"):
        raise ValueError(
            f"torchao_config={value!r} is implemented for CPU only (sglkit's own int8/int4 weight-only linears); "
            f"device is {device!r}. Serve unquantized on CUDA (drop --torchao-config), or use --device cpu."
        )


def create_linear_method(value: str) -> LinearMethod:
    """A fresh linear method for one layer under ``value`` (one of ``TORCHAO_CONFIGS``)."""
    validate_torchao_config(value)
    if value == "int8wo":
        return Int8WeightOnlyMethod()
    return Int4WeightOnlyMethod(group_size=int(value.rpartition("-")[2]))


def should_quantize(qualified_name: str) -> bool:
    """SGLang's ``proj_filter``: quantize the linears whose qualified name contains "proj"."""
    return "proj" in qualified_name
