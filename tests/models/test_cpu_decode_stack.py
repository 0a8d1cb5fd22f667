"""The CPU decode stack (sglkit.models.cpu_decode_stack): a decode pass of every layer in one C++ call.

A real ModelRunner over tiny checkpoints decodes requests of different lengths greedily twice, once through the
stack and once through the layer modules: logits, tokens and the whole KV pool are bit-identical (float32 with
RMSNorm's torch code, bfloat16 with the fused norm, Qwen2's qkv bias, Qwen3's per-head q/k norms, int8wo
weights). Models or settings the stack does not compute exactly (a mixture-of-experts MLP, a sliding window, int4
weights, the fused ops off) keep the
layers and say why; a weight update rebuilds it; the C++ object checks what it is given.
"""

from __future__ import annotations

import logging

import pytest
import torch

from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.cpu_kernels import load_kernels
from sglkit.layers.cpu_kernels.decode_stack import DecodeStack, set_cpu_decode_stack
from sglkit.layers.cpu_kernels.fused_ops import set_cpu_fused_ops
from sglkit.runtime.executor.model_runner import ModelRunner
from tests.runtime.executor.graph_cases import tiny_server_args


def _stack_runs_here() -> bool:
    kernels = load_kernels()
    return (
        kernels is not None
        and kernels.fused_ops_supported()
        and kernels.gemm_supported("bfloat16")
        and kernels.decode_attention_supported(16, 2)
    )


pytestmark = pytest.mark.skipif(not _stack_runs_here(), reason="sglkit's CPU kernels do not run here")

PROMPT_LENS = (3, 9, 17)  # ragged: each request its own length and table row
STEPS = 4


class RaggedBatch:
    """Requests of ``PROMPT_LENS`` random tokens in one runner's pools: ``prefill()``, then ``decode(step, ids)``."""

    def __init__(self, runner: ModelRunner, seed: int = 0) -> None:
        self.runner = runner
        runner.req_to_token_pool.clear()
        runner.token_to_kv_pool_allocator.clear()
        gen = torch.Generator().manual_seed(seed)
        self.prompts = [torch.randint(0, runner.vocab_size, (n,), generator=gen) for n in PROMPT_LENS]
        slots = [runner.req_to_token_pool.alloc() for _ in PROMPT_LENS]
        self.locs = []
        for slot, n in zip(slots, PROMPT_LENS, strict=True):
            locs = runner.token_to_kv_pool_allocator.alloc(n + STEPS)
            runner.req_to_token_pool.write(slot, 0, locs)
            self.locs.append(locs)
        self.req_pool_indices = torch.tensor(slots, dtype=torch.int64)

    def _batch(self, mode, input_ids, positions, out_loc, seq_lens, ext, logits_indices) -> ForwardBatch:
        runner = self.runner
        starts = [sum(ext[:i]) for i in range(len(ext))]
        return ForwardBatch(
            forward_mode=mode,
            batch_size=len(seq_lens),
            input_ids=input_ids,
            positions=positions,
            out_cache_loc=out_loc,
            req_pool_indices=self.req_pool_indices,
            seq_lens=torch.tensor(seq_lens, dtype=torch.int64),
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=[s - e for s, e in zip(seq_lens, ext, strict=True)],
            extend_seq_lens_cpu=ext,
            extend_start_loc_cpu=starts,
            logits_indices=logits_indices,
            req_to_token_pool=runner.req_to_token_pool,
            token_to_kv_pool=runner.token_to_kv_pool,
            attn_backend=runner.attn_backend,
        )

    def prefill(self) -> ForwardBatch:
        lens = list(PROMPT_LENS)
        positions = torch.cat([torch.arange(n) for n in lens])
        out_loc = torch.cat([locs[:n] for locs, n in zip(self.locs, lens, strict=True)])
        last = torch.tensor(lens).cumsum(0) - 1
        return self._batch(ForwardMode.EXTEND, torch.cat(self.prompts), positions, out_loc, lens, lens, last)

    def decode(self, step: int, ids: torch.Tensor) -> ForwardBatch:
        positions = torch.tensor([n + step for n in PROMPT_LENS])
        out_loc = torch.stack([locs[n + step] for locs, n in zip(self.locs, PROMPT_LENS, strict=True)])
        seq_lens = [n + step + 1 for n in PROMPT_LENS]
        rows = torch.arange(len(PROMPT_LENS))
        return self._batch(ForwardMode.DECODE, ids, positions, out_loc, seq_lens, [1] * len(seq_lens), rows)


@torch.inference_mode()
def _greedy(runner: ModelRunner, stack_on: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Prefill then ``STEPS`` greedy decode steps, the stack on or off: (logits, tokens, every K/V buffer)."""
    old = set_cpu_decode_stack(stack_on)
    try:
        batch = RaggedBatch(runner)
        ids = runner.forward(batch.prefill()).argmax(-1)
        logits, tokens = [], []
        for step in range(STEPS):
            out = runner.forward(batch.decode(step, ids))
            ids = out.argmax(-1)
            logits.append(out)
            tokens.append(ids)
    finally:
        set_cpu_decode_stack(old)
    pool = runner.token_to_kv_pool
    kv = [buf.clone() for layer in range(pool.num_layers) for buf in pool.get_kv_buffer(layer)]
    return torch.stack(logits), torch.stack(tokens), kv


def _runner(path: str, **overrides) -> ModelRunner:
    return ModelRunner(tiny_server_args(path, "torch_native", **overrides))


def _assert_stack_equals_layers(runner: ModelRunner) -> None:
    stack = runner.model.model.cpu_decode_stack
    before = stack.passes
    on = _greedy(runner, True)
    assert stack.reason is None and stack.passes - before == STEPS
    off = _greedy(runner, False)
    assert stack.passes - before == STEPS  # the layers ran the second time
    assert torch.equal(on[0], off[0]) and torch.equal(on[1], off[1])
    assert all(torch.equal(a, b) for a, b in zip(on[2], off[2], strict=True))


@pytest.mark.parametrize(
    ("architecture", "overrides"),
    [
        ("LlamaForCausalLM", {}),  # float32: RMSNorm's torch code
        ("LlamaForCausalLM", {"dtype": "bfloat16"}),  # the fused norm
        ("Qwen2ForCausalLM", {"dtype": "bfloat16"}),  # qkv bias
        ("Qwen3ForCausalLM", {"dtype": "bfloat16"}),  # per-head q/k norms, fused
        ("Qwen3ForCausalLM", {}),  # per-head q/k norms, torch code on the strided views
        ("Phi3ForCausalLM", {"dtype": "bfloat16"}),  # the Llama layer under other checkpoint names
        ("LlamaForCausalLM", {"dtype": "bfloat16", "torchao_config": "int8wo"}),
        ("LlamaForCausalLM", {"torchao_config": "int8wo"}),  # int8 on float32 activations, cast around
    ],
    ids=[
        "llama-fp32",
        "llama-bf16",
        "qwen2-bf16",
        "qwen3-bf16",
        "qwen3-fp32",
        "phi3-bf16",
        "llama-bf16-int8wo",
        "llama-fp32-int8wo",
    ],
)
def test_stack_is_bit_identical_to_the_layers(tiny_model_factory, architecture, overrides):
    if overrides.get("torchao_config") and not load_kernels().gemm_supported("int8"):
        pytest.skip("no blocked int8 GEMM on this CPU")
    _assert_stack_equals_layers(_runner(tiny_model_factory(architecture), **overrides))


@pytest.mark.parametrize(
    ("architecture", "model_kwargs", "overrides", "reason"),
    [
        ("MixtralForCausalLM", {}, {"dtype": "bfloat16"}, "a SparseMoeBlock MLP"),
        ("MistralForCausalLM", {"sliding_window": 8}, {}, "sliding window"),
        ("LlamaForCausalLM", {}, {"dtype": "bfloat16", "torchao_config": "int4wo-32"}, "held by int4wo"),
    ],
    ids=["moe", "window", "int4"],
)
def test_what_the_stack_does_not_compute_stays_on_the_layers(
    tiny_model_factory, architecture, model_kwargs, overrides, reason
):
    runner = _runner(tiny_model_factory(architecture, **model_kwargs), **overrides)
    logits, tokens, _ = _greedy(runner, True)
    stack = runner.model.model.cpu_decode_stack
    assert reason in stack.reason and stack.passes == 0
    assert tokens.shape == (STEPS, len(PROMPT_LENS)) and torch.isfinite(logits).all()


def test_fused_ops_off_keeps_the_layers(llama_path):
    runner = _runner(llama_path, dtype="bfloat16")
    old = set_cpu_fused_ops(False)
    try:
        _greedy(runner, True)
    finally:
        set_cpu_fused_ops(old)
    assert runner.model.model.cpu_decode_stack.passes == 0


def test_weight_update_rebuilds_the_stack(llama_path, same_shape_model_path):
    runner = _runner(llama_path)
    before = _greedy(runner, True)
    stack = runner.model.model.cpu_decode_stack
    assert stack.reason is None
    ok, _ = runner.update_weights(same_shape_model_path)
    assert ok and stack.reason == "not checked yet"  # dropped with the old weights
    after = _greedy(runner, True)
    assert stack.reason is None and not torch.equal(after[0], before[0])
    _assert_stack_equals_layers(runner)  # and it runs the new weights


def test_torch_compile_steps_aside_for_the_stack(llama_path, caplog):
    with caplog.at_level(logging.INFO, logger="sglkit.runtime.executor.model_runner"):
        runner = _runner(llama_path, enable_torch_compile=True)
    assert runner.compiled_decode is None and "nothing is compiled" in caplog.text
    assert runner.cpu_decode_stack_runs()
    old = set_cpu_decode_stack(False)
    try:
        assert not runner.cpu_decode_stack_runs()
        assert "SGLKIT_CPU_DECODE_STACK is off" in runner.model.model.cpu_decode_stack.check(
            runner.token_to_kv_pool, runner.dtype
        )
    finally:
        set_cpu_decode_stack(old)


def test_the_kernel_object_checks_its_inputs():
    norm = torch.ones(16)
    with pytest.raises(RuntimeError, match="per layer"):
        DecodeStack([norm] * 5, (16, 1, 1, 16, 32, 16), [1e-6] * 4, 0.25, fused_norm=False)
    with pytest.raises(RuntimeError, match="missing"):
        DecodeStack([None] * 18, (16, 1, 1, 16, 32, 16), [1e-6] * 4, 0.25, fused_norm=False)
    with pytest.raises(RuntimeError, match="four per layer"):
        DecodeStack([norm] * 18, (16, 1, 1, 16, 32, 16), [1e-6], 0.25, fused_norm=False)
    with pytest.raises(RuntimeError, match="or neither"):
        DecodeStack([norm] * 17 + [None], (16, 1, 1, 16, 32, 16), [1e-6] * 4, 0.25, fused_norm=False)
