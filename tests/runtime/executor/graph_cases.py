"""Shared cases for the CUDA-graph runner tests: a tiny-Llama ModelRunner and greedy decode, graph vs eager.

The runner is the real ``ModelRunner`` with ``init_cuda_graphs(graph_factory=EagerReplayGraph)``: static
buffers, padding, the backend's capture/replay metadata hooks and the logits slicing are what runs; only
``torch.cuda.CUDAGraph`` is replaced by a stand-in whose replay re-runs the captured callable.
"""

from __future__ import annotations

import torch

from sglkit.bench.one_batch import StaticBatch
from sglkit.runtime.executor.cuda_graph_runner import EagerReplayGraph
from sglkit.runtime.executor.model_runner import ModelRunner
from sglkit.server_args import ServerArgs

INPUT_LEN, OUTPUT_LEN = 11, 5
MAX_BS = 8  # captured sizes 1, 2, 4, 8


def tiny_server_args(model_path: str, backend: str, **overrides) -> ServerArgs:
    """ServerArgs of these tests' tiny-model runners: CPU, 64-token context, 1024-token pool, 16 requests, no
    radix cache; ``overrides`` replace or add fields."""
    fields = dict(
        model_path=model_path,
        device="cpu",
        attention_backend=backend,
        random_seed=0,
        context_length=64,
        max_total_tokens=1024,
        max_running_requests=16,
        disable_radix_cache=True,
    )
    return ServerArgs(**{**fields, **overrides})


def make_runner(
    model_path: str, backend: str, max_bs: int = MAX_BS, graph_factory=EagerReplayGraph
) -> ModelRunner:
    """A CPU ModelRunner over the tiny model with decode graphs captured by a CPU stand-in."""
    runner = ModelRunner(tiny_server_args(model_path, backend))
    assert runner.cuda_graph_runner is None  # never on CPU by itself
    runner.init_cuda_graphs(graph_factory=graph_factory, max_bs=max_bs, show_progress=False)
    return runner


def kv_snapshot(runner: ModelRunner) -> list[torch.Tensor]:
    """Copies of every layer's K and V buffers [S + 1, Hkv, D]."""
    pool = runner.token_to_kv_pool
    return [buf.clone() for layer in range(pool.num_layers) for buf in pool.get_kv_buffer(layer)]


@torch.inference_mode()
def greedy(runner: ModelRunner, batch_size: int, use_graph: bool, seed: int = 0):
    """Prefill ``batch_size`` random prompts, then greedy decode steps; returns (decode logits [steps, B, V],
    tokens [steps, B], the batch, and the KV pool after each decode step)."""
    graphs = runner.cuda_graph_runner
    runner.cuda_graph_runner = graphs if use_graph else None
    try:
        batch = StaticBatch(runner, batch_size, INPUT_LEN, OUTPUT_LEN, seed=seed)
        ids = runner.forward(batch.prefill()).argmax(-1)
        logits, tokens, pools = [], [], []
        for step in range(OUTPUT_LEN - 1):
            forward_batch = batch.decode(step, ids)
            # StaticBatch's out_cache_loc is a column view; the eager triton KV store needs it contiguous.
            forward_batch.out_cache_loc = forward_batch.out_cache_loc.contiguous()
            out = runner.forward(forward_batch)
            ids = out.argmax(-1)
            logits.append(out)
            tokens.append(ids)
            pools.append(kv_snapshot(runner))
    finally:
        runner.cuda_graph_runner = graphs
    return torch.stack(logits), torch.stack(tokens), batch, pools
