"""Every linear weight held once, in a served model (sglkit/layers/linear.py + sglkit.layers.quantization): after the
model runner processes its weights the parameters plus the methods' tensors are one copy; state_dict still reads
the real weights; update_weights and its rollback re-load and re-process; int8wo / int4wo stay close to bf16."""

from __future__ import annotations

import torch

from sglkit.layers.linear import (
    Linear,
    dense_parameter,
    linear_weight_bytes,
    pack_linear_weights,
    quantize_linear_weights,
)
from sglkit.models.loader import load_model
from sglkit.runtime.executor.model_runner import ModelRunner
from sglkit.server_args import ServerArgs
from sglkit.testing.paged_runner import PagedRunner

PROMPT = [1, 17, 42, 99, 7, 256, 311, 5, 64, 128, 200, 3]


def held_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter storage (each counted once) plus what the linear methods hold beside them."""
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    methods = sum(
        m.linear_method.held_bytes()
        for m in model.modules()
        if isinstance(m, Linear) and m.linear_method.processed
    )
    return sum(storages.values()) + methods


def one_copy_bytes(model: torch.nn.Module) -> int:
    """Bytes of one plain copy of every parameter (shapes x dtypes)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def logits(model, hf_config, dtype=torch.float32) -> torch.Tensor:
    with torch.inference_mode():
        return PagedRunner(model, hf_config, dtype=dtype).forward([(0, PROMPT)])[0]  # [T, V]


def test_served_model_holds_each_weight_once_and_reads_back_exactly(llama_path):
    runner = ModelRunner(ServerArgs(model_path=llama_path, device="cpu", random_seed=0))
    plain, _ = load_model(llama_path, dtype="float32", device="cpu")  # the same checkpoint, never processed
    linears = [m for m in runner.model.modules() if isinstance(m, Linear)]
    processed = [m for m in linears if m.linear_method.processed]
    if processed:  # oneDNN packed the float32 weights (any x86 CPU): their plain copies are gone
        assert all(m.weight.untyped_storage().nbytes() == m.weight.element_size() for m in processed)
    one_copy = one_copy_bytes(plain)
    held = held_bytes(runner.model)
    assert one_copy <= held <= one_copy * 1.05  # blocked layouts may pad a little; never a second copy
    assert linear_weight_bytes(runner.model) == sum(m.linear_method.weight_bytes(m) for m in linears)
    ours, reference = runner.model.state_dict(), plain.state_dict()
    assert ours.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name  # packing is exact and reversible
    for name in (
        "model.layers.0.self_attn.qkv_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "lm_head.weight",
    ):
        assert torch.equal(dense_parameter(runner.model, name), reference[name]), name  # /get_weights_by_name
    named = dict(runner.model.named_parameters())
    assert all(named[n].shape == t.shape and named[n].dtype == t.dtype for n, t in reference.items())
    torch.testing.assert_close(
        logits(runner.model, runner.model_config.hf_config), logits(plain, plain.config)
    )


def test_update_weights_reloads_processed_layers_and_rolls_back(
    llama_path, same_shape_model_path, other_size_model_path
):
    runner = ModelRunner(ServerArgs(model_path=llama_path, device="cpu", random_seed=0))
    before = {n: t.clone() for n, t in runner.model.state_dict().items()}
    processed = sum(m.linear_method.processed for m in runner.model.modules() if isinstance(m, Linear))

    assert runner.update_weights(same_shape_model_path) == (True, "Succeeded to update model weights.")
    new, _ = load_model(same_shape_model_path, dtype="float32", device="cpu")
    for name, tensor in new.state_dict().items():
        assert torch.equal(runner.model.state_dict()[name], tensor), name
    assert (
        sum(m.linear_method.processed for m in runner.model.modules() if isinstance(m, Linear)) == processed
    )
    assert held_bytes(runner.model) <= one_copy_bytes(new) * 1.05

    success, message = runner.update_weights(other_size_model_path)  # wrong shapes: rolled back
    assert not success and "Rolling back to original weights" in message
    for name, tensor in new.state_dict().items():
        assert torch.equal(runner.model.state_dict()[name], tensor), name
    assert (
        sum(m.linear_method.processed for m in runner.model.modules() if isinstance(m, Linear)) == processed
    )
    assert any(not torch.equal(before[n], t) for n, t in new.state_dict().items())


def test_quantized_model_stays_quantized_across_update_weights(llama_path, same_shape_model_path):
    model, config = load_model(llama_path, dtype="bfloat16", device="cpu")
    bf16_bytes = linear_weight_bytes(model)
    assert quantize_linear_weights(model, "int8wo") == 8  # qkv, o, gate_up, down in each of 2 layers
    pack_linear_weights(model)
    quantized = [m for n, m in model.named_modules() if isinstance(m, Linear) and "proj" in n]
    assert all(m.linear_method.name == "int8wo" and m.linear_method.processed for m in quantized)
    assert linear_weight_bytes(model) < 0.55 * bf16_bytes  # int8 + scales vs bf16
    assert held_bytes(model) < one_copy_bytes(model)

    from sglkit.models.loader import load_checkpoint

    with torch.inference_mode():  # as ModelRunner.update_weights: load, then process again
        load_checkpoint(model, same_shape_model_path)
        pack_linear_weights(model)
    assert all(m.linear_method.name == "int8wo" and m.linear_method.processed for m in quantized)
    fresh, _ = load_model(same_shape_model_path, dtype="bfloat16", device="cpu")
    quantize_linear_weights(fresh, "int8wo")
    torch.testing.assert_close(
        logits(model, config.hf_config, torch.bfloat16),
        logits(fresh, config.hf_config, torch.bfloat16),
        atol=0,
        rtol=0,
    )


def test_int8wo_and_int4wo_stay_close_to_bf16(llama_path):
    """The accuracy check against bf16 on the same weights. Random tiny weights are a harsh case for 4 bits
    (groups of 32 Gaussian values; relative logit error ~0.3 here); docs/quantization.md has the trained demo
    model's table (python -m sglkit.bench.quant_accuracy)."""
    reference_model, config = load_model(llama_path, dtype="bfloat16", device="cpu")
    reference = logits(reference_model, config.hf_config, torch.bfloat16)
    errors = {}
    for torchao_config in ("int8wo", "int4wo-32"):
        model, _ = load_model(llama_path, dtype="bfloat16", device="cpu")
        quantize_linear_weights(model, torchao_config)
        out = logits(model, config.hf_config, torch.bfloat16)
        errors[torchao_config] = ((out - reference).abs().mean() / reference.abs().mean()).item()
        if torchao_config == "int8wo":
            assert (out.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.9
    assert errors["int8wo"] < 0.06 and errors["int4wo-32"] < 0.45
    assert errors["int8wo"] < errors["int4wo-32"]
