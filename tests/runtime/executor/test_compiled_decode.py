"""--enable-torch-compile on CPU (sglkit.runtime.executor.compiled_decode, sglkit.layers.compiled_ops).

A tiny Llama whose decode forward is compiled by inductor gives the eager runner's greedy tokens and logits
(to float32 rounding: inductor reorders the norms' reductions), for batch 1 (the one-token graph) and batch 3
(the dynamic one); prefill and batches over --torch-compile-max-bs run eagerly; serving many sizes does not
recompile; the flags are validated. Compiling takes about half a minute, so the module is marked slow.
"""

from __future__ import annotations

import logging

import pytest
import torch

from sglkit.bench.one_batch import StaticBatch
from sglkit.layers.cpu_kernels.decode_stack import set_cpu_decode_stack
from sglkit.runtime.executor.model_runner import ModelRunner
from sglkit.server_args import ServerArgs
from tests.runtime.executor.graph_cases import tiny_server_args

pytestmark = pytest.mark.slow

INPUT_LEN, OUTPUT_LEN = 9, 6
MAX_BS = 4


def _runner(model_path: str, compile_: bool) -> ModelRunner:
    args = tiny_server_args(
        model_path, "torch_native", enable_torch_compile=compile_, torch_compile_max_bs=MAX_BS
    )
    return ModelRunner(args)


@pytest.fixture(scope="module", autouse=True)
def decode_stack_off():
    """The CPU decode stack (which makes compiling moot, so start-up skips it) off: these tests compile."""
    old = set_cpu_decode_stack(False)
    yield
    set_cpu_decode_stack(old)


@pytest.fixture(scope="module")
def runners(llama_path):
    return _runner(llama_path, False), _runner(llama_path, True)


@torch.inference_mode()
def _greedy(runner: ModelRunner, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill then greedy decode; (decode logits [steps, B, V], tokens [steps, B])."""
    batch = StaticBatch(runner, batch_size, INPUT_LEN, OUTPUT_LEN, seed=batch_size)
    ids = runner.forward(batch.prefill()).argmax(-1)
    logits, tokens = [], []
    for step in range(OUTPUT_LEN - 1):
        out = runner.forward(batch.decode(step, ids))
        ids = out.argmax(-1)
        logits.append(out)
        tokens.append(ids)
    return torch.stack(logits), torch.stack(tokens)


def test_flags_are_validated():
    args = ServerArgs(model_path="m", enable_torch_compile=True, torch_compile_max_bs=8)
    assert args.enable_torch_compile and args.torch_compile_max_bs == 8
    assert (
        ServerArgs(model_path="m").torch_compile_max_bs == 32
        and not ServerArgs(model_path="m").enable_torch_compile
    )
    with pytest.raises(ValueError, match="torch_compile_max_bs must be a positive integer"):
        ServerArgs(model_path="m", torch_compile_max_bs=0)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_compiled_decode_equals_eager(runners, batch_size):
    eager, compiled = runners
    runs_before = compiled.compiled_decode.num_runs
    eager_logits, eager_tokens = _greedy(eager, batch_size)
    compiled_logits, compiled_tokens = _greedy(compiled, batch_size)
    assert compiled.compiled_decode.num_runs - runs_before == OUTPUT_LEN - 1  # every decode step, no prefill
    assert torch.equal(compiled_tokens, eager_tokens)
    torch.testing.assert_close(compiled_logits, eager_logits, rtol=1e-4, atol=1e-4)


def test_big_batches_run_eagerly_and_sizes_do_not_recompile(runners):
    eager, compiled = runners
    runs_before = compiled.compiled_decode.num_runs
    _, eager_tokens = _greedy(eager, MAX_BS + 1)
    _, compiled_tokens = _greedy(compiled, MAX_BS + 1)
    assert compiled.compiled_decode.num_runs == runs_before  # over --torch-compile-max-bs: eager
    assert torch.equal(compiled_tokens, eager_tokens)
    from torch._dynamo.utils import counters

    frames_before = counters["stats"]["unique_graphs"]
    for bs in (2, 4, 1):
        _greedy(compiled, bs)
    assert (
        counters["stats"]["unique_graphs"] == frames_before
    )  # warm-up compiled batch 1 and the dynamic graph


def test_compile_log_lines(llama_path, caplog):
    with caplog.at_level(logging.INFO, logger="sglkit.runtime.executor.compiled_decode"):
        runner = _runner(llama_path, True)
    assert "Compile the decode step with torch.compile begin" in caplog.text
    assert "Compile the decode step with torch.compile end. Time elapsed:" in caplog.text
    assert runner.compiled_decode.max_bs == MAX_BS
