"""SGLang's --torchao-config values (sglkit/layers/quantization/config.py): the weight-only ones map to sglkit's
methods, the others and non-CPU devices are refused with the choices, and only "proj" linears are chosen."""

from __future__ import annotations

import pytest
import torch

from sglkit.layers.linear import Linear, quantize_linear_weights
from sglkit.layers.quantization import (
    TORCHAO_CONFIGS,
    Int4WeightOnlyMethod,
    Int8WeightOnlyMethod,
    create_linear_method,
    should_quantize,
    validate_torchao_config,
)


def test_values_map_to_methods():
    assert TORCHAO_CONFIGS == ("int8wo", "int4wo-32", "int4wo-64", "int4wo-128", "int4wo-256")
    assert isinstance(create_linear_method("int8wo"), Int8WeightOnlyMethod)
    method = create_linear_method("int4wo-64")
    assert isinstance(method, Int4WeightOnlyMethod) and method.group_size == 64
    assert create_linear_method("int8wo") is not create_linear_method("int8wo")  # one per layer


@pytest.mark.parametrize("value", ["int8dq", "fp8wo", "int4wo-100", "int8"])
def test_other_values_are_refused_with_the_choices(value):
    with pytest.raises(ValueError, match=r"torchao_config must be one of \('int8wo', 'int4wo-32'"):
        validate_torchao_config(value)


def test_cuda_is_refused_clearly():
    validate_torchao_config("", "cuda")  # nothing asked: fine anywhere
    with pytest.raises(ValueError, match="implemented for CPU only"):
        validate_torchao_config("int8wo", "cuda:0")


def test_server_args_checks_list_the_same_values():
    checks = pytest.importorskip("sglkit.server_args_checks")
    if not hasattr(checks, "TORCHAO_CONFIGS"):
        pytest.skip("--torchao-config not wired into ServerArgs yet")
    assert checks.TORCHAO_CONFIGS == TORCHAO_CONFIGS


def test_only_proj_linears_are_quantized():
    assert should_quantize("model.layers.0.self_attn.qkv_proj") and should_quantize("mlp.down_proj")
    assert not should_quantize("mlp.gate") and not should_quantize("score")
    model = torch.nn.ModuleDict({"o_proj": Linear(64, 32, bias=False), "gate": Linear(64, 32, bias=False)})
    for param in model.parameters():
        param.weight_loader(param, torch.randn(param.shape))
    assert quantize_linear_weights(model, "int8wo") == 1
    assert model["o_proj"].linear_method.name == "int8wo" and model["gate"].linear_method.name == "packed"
    assert quantize_linear_weights(model, "") == 0
