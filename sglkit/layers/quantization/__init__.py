"""Model layers: how a ``Linear`` holds and multiplies its weight (plain, oneDNN-packed, int8 / int4 weight-only).

``LinearMethod`` is the seam (``process_weights_after_loading`` / ``apply`` / ``dense_weight`` / ``release``);
``config`` maps SGLang's ``--torchao-config`` values to the quantized methods. ``sglkit.layers.linear`` applies
them to a model (``pack_linear_weights``, ``quantize_linear_weights``).
"""

from sglkit.layers.quantization.base import DenseLinearMethod, LinearMethod
from sglkit.layers.quantization.config import (
    TORCHAO_CONFIGS,
    create_linear_method,
    should_quantize,
    validate_torchao_config,
)
from sglkit.layers.quantization.int4 import Int4WeightOnlyMethod
from sglkit.layers.quantization.int8 import Int8WeightOnlyMethod
from sglkit.layers.quantization.packed import PackedLinearMethod

__all__ = [
    "TORCHAO_CONFIGS",
    "DenseLinearMethod",
    "Int4WeightOnlyMethod",
    "Int8WeightOnlyMethod",
    "LinearMethod",
    "PackedLinearMethod",
    "create_linear_method",
    "should_quantize",
    "validate_torchao_config",
]
