"""CUDA-graph decode runner (scheduler -> model runner -> here -> model): captures decode forwards, replays them.

At start-up the model runner captures one graph per batch size of ``capture_batch_sizes(--cuda-graph-max-bs)``
(largest first, all in one shared memory pool). A graph reads static input buffers and writes the logits of
every row of its padded batch:

    input_ids, positions, out_cache_loc, req_pool_indices, seq_lens   [max_bs] int64 each, rows [:bs] used
    logits                                                            [bs, V] float32, the graph's output

A decode batch of ``raw_bs`` rows is copied into rows [:raw_bs]; rows [raw_bs:bs] are padding: token 0 at
position 0 writing the reserved KV slot 0, reading a length-1 dummy sequence of request row 0. The attention
backend refreshes its metadata in place, outside the graph (``init_forward_metadata_replay_cuda_graph``), then
the graph replays and the real rows' logits are sliced (and copied out of the graph's buffer) for the sampler,
which runs outside the graph. Prefill and batches over the largest size run eagerly.

``torch.cuda.CUDAGraph`` is wrapped by ``TorchCudaGraph``; CPU tests inject ``EagerReplayGraph`` instead, whose
replay re-runs the captured callable on the same static buffers: everything but the graph itself is what runs on
a GPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from tqdm import tqdm

from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.attention.base import RadixAttention
from sglkit.runtime.executor.cuda_graph_buckets import capture_batch_sizes, padded_batch_size

if TYPE_CHECKING:
    from sglkit.runtime.executor.model_runner import ModelRunner

__all__ = ["CudaGraphRunner", "EagerReplayGraph", "GraphLike", "TorchCudaGraph", "padding_decode_batch"]

logger = logging.getLogger(__name__)

NUM_WARMUP_RUNS = 2  # eager runs of each size before its capture: compile kernels, settle lazy state


def padding_decode_batch(runner, bs: int, buffers: ForwardBatch | None = None) -> ForwardBatch:
    """A DECODE batch of ``bs`` padding rows: token 0 at position 0 writing the reserved KV slot 0, reading a
    length-1 sequence of request row 0. ``runner`` gives the pools, backend and device (``req_to_token_pool``,
    ``token_to_kv_pool``, ``attn_backend``, ``device``); the tensors are rows [:bs] of ``buffers``' (views of a
    bigger padding batch) or fresh ones."""
    if buffers is None:
        ints = dict(dtype=torch.int64, device=runner.device)
        zeros = [torch.zeros(bs, **ints) for _ in range(4)]
        tensors = (*zeros, torch.ones(bs, **ints), torch.arange(bs, **ints))
    else:
        b = buffers
        tensors = tuple(
            t[:bs]
            for t in (
                b.input_ids,
                b.positions,
                b.out_cache_loc,
                b.req_pool_indices,
                b.seq_lens,
                b.logits_indices,
            )
        )
    input_ids, positions, out_cache_loc, req_pool_indices, seq_lens, logits_indices = tensors
    return ForwardBatch(
        forward_mode=ForwardMode.DECODE,
        batch_size=bs,
        input_ids=input_ids,
        positions=positions,
        out_cache_loc=out_cache_loc,
        req_pool_indices=req_pool_indices,
        seq_lens=seq_lens,
        seq_lens_cpu=[1] * bs,
        extend_prefix_lens_cpu=[0] * bs,
        extend_seq_lens_cpu=[1] * bs,
        extend_start_loc_cpu=list(range(bs)),
        logits_indices=logits_indices,
        req_to_token_pool=runner.req_to_token_pool,
        token_to_kv_pool=runner.token_to_kv_pool,
        attn_backend=runner.attn_backend,
    )


class GraphLike(Protocol):
    """What the runner needs of a graph: capture a callable once, replay it later."""

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Record ``fn`` (running it once) and return its output buffer, which each replay overwrites."""

    def replay(self) -> None:
        """Run the recorded work again on the current contents of the static buffers."""


class TorchCudaGraph:
    """``torch.cuda.CUDAGraph`` capturing into the runner's shared memory pool."""

    def __init__(self, pool) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.pool = pool

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Capture ``fn`` on a side stream (``torch.cuda.graph``); returns the output living in the pool."""
        with torch.cuda.graph(self.graph, pool=self.pool):
            out = fn()
        return out

    def replay(self) -> None:
        """Launch the captured kernels."""
        self.graph.replay()


class EagerReplayGraph:
    """CPU stand-in for ``torch.cuda.CUDAGraph``: capture runs ``fn`` and keeps it and its output; replay re-runs
    ``fn`` (on the same static buffers) and writes the result into that output, as a graph replay would."""

    def __init__(self, pool=None) -> None:
        self.fn: Callable[[], torch.Tensor] | None = None
        self.out: torch.Tensor | None = None
        self.num_replays = 0

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run ``fn`` once; remember it and its output buffer."""
        self.fn, self.out = fn, fn()
        return self.out

    def replay(self) -> None:
        """Re-run the captured callable into the captured output buffer."""
        self.out.copy_(self.fn())
        self.num_replays += 1


class CudaGraphRunner:
    """Decode graphs of one model runner: static buffers, capture at start-up, padded replay.

    ``graph_factory(pool)`` makes one graph object (default ``TorchCudaGraph``; ``EagerReplayGraph`` in CPU
    tests). ``can_run`` says whether a batch is served by a graph; ``replay`` returns its logits [raw_bs, V].
    """

    def __init__(
        self,
        model_runner: ModelRunner,
        max_bs: int,
        graph_factory: Callable[[object], GraphLike] | None = None,
        show_progress: bool = True,
    ) -> None:
        self.model = model_runner.model
        self.attn_backend = model_runner.attn_backend
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.device = torch.device(model_runner.device)
        self.capture_bs = capture_batch_sizes(max_bs)
        self.max_bs = self.capture_bs[-1]
        self.graph_factory = graph_factory or TorchCudaGraph
        self.num_replays = 0

        # Static inputs; padding rows keep their values (see padding_decode_batch).
        self.full_batch = padding_decode_batch(self, self.max_bs)
        batch = self.full_batch
        self.input_ids, self.positions, self.out_cache_loc = (
            batch.input_ids,
            batch.positions,
            batch.out_cache_loc,
        )
        self.req_pool_indices, self.seq_lens = batch.req_pool_indices, batch.seq_lens
        self.logits_indices = batch.logits_indices
        self.batches: dict[int, ForwardBatch] = {}
        self.graphs: dict[int, GraphLike] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.capture(show_progress)

    # ----- capture -----
    def _static_batch(self, bs: int) -> ForwardBatch:
        """The padded DECODE batch of ``bs`` rows over views of the static buffers."""
        return padding_decode_batch(self, bs, self.full_batch)

    def _forward(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """The captured work: the model over the padded batch, logits of every row [bs, V] float32."""
        hidden = self.model(forward_batch.input_ids, forward_batch.positions, forward_batch)  # [bs, H]
        return self.model.compute_logits(hidden)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def capture(self, show_progress: bool = True) -> None:
        """Capture every size, largest first (the shared pool is sized by the first), with SGLang's log lines."""
        logger.info("Capture cuda graph begin. This can take up to several minutes.")
        start = time.perf_counter()
        layers = [m for m in self.model.modules() if isinstance(m, RadixAttention)]
        max_num_tokens = self.max_bs * self.req_to_token_pool.req_to_token.shape[1]
        self.attn_backend.init_cuda_graph_state(self.max_bs, max_num_tokens, layers)
        pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        sizes = list(reversed(self.capture_bs))
        for bs in tqdm(sizes, disable=not show_progress):
            forward_batch = self.batches[bs] = self._static_batch(bs)
            self.attn_backend.init_forward_metadata_capture_cuda_graph(forward_batch)
            for _ in range(NUM_WARMUP_RUNS):
                self._forward(forward_batch)
            self._synchronize()
            graph = self.graph_factory(pool)
            self.outputs[bs] = graph.capture(lambda fb=forward_batch: self._forward(fb))
            self.graphs[bs] = graph
            self._synchronize()
        logger.info(f"Capture cuda graph end. Time elapsed: {time.perf_counter() - start:.2f} s")

    # ----- replay -----
    def can_run(self, forward_batch: ForwardBatch) -> bool:
        """True for a decode batch with a captured size at least its size."""
        return (
            forward_batch.forward_mode.is_decode()
            and padded_batch_size(self.capture_bs, forward_batch.batch_size) is not None
        )

    def replay(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """Copy the batch into the static buffers (padding the rest), refresh the backend's metadata, replay the
        graph of the padded size; returns the real rows' logits [raw_bs, V] float32 (a copy)."""
        raw_bs = forward_batch.batch_size
        bs = padded_batch_size(self.capture_bs, raw_bs)
        for static, real, pad in (
            (self.input_ids, forward_batch.input_ids, 0),
            (self.positions, forward_batch.positions, 0),
            (self.out_cache_loc, forward_batch.out_cache_loc, 0),
            (self.req_pool_indices, forward_batch.req_pool_indices, 0),
            (self.seq_lens, forward_batch.seq_lens, 1),
        ):
            static[:raw_bs].copy_(real, non_blocking=True)
            if bs > raw_bs:
                static[raw_bs:bs].fill_(pad)
        padded = self.batches[bs]
        pad_rows = bs - raw_bs
        padded.seq_lens_cpu = list(forward_batch.seq_lens_cpu) + [1] * pad_rows  # host lists, for backends
        padded.extend_prefix_lens_cpu = list(forward_batch.extend_prefix_lens_cpu) + [0] * pad_rows
        self.attn_backend.init_forward_metadata_replay_cuda_graph(padded)
        self.graphs[bs].replay()
        self.num_replays += 1
        return self.outputs[bs][:raw_bs].clone()
