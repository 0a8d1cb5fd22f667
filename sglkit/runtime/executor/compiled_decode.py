"""Compiled decode on CPU (scheduler -> model runner -> here -> torch.compile'd model forward): --enable-torch-compile.

The model's forward (embedding, decoder layers, final norm) is compiled once with ``torch.compile`` (inductor's
C++ backend) and used for decode batches of up to ``--torch-compile-max-bs`` requests; prefill, mixed and
larger batches run eagerly, and the logits head always does. Packed linears and attention stay eager behind
opaque custom ops (``sglkit.layers.compiled_ops``); what inductor fuses is the rest of each layer: RMSNorm with
its residual add, rotary, SiLU-and-mul, the views between them, so one layer is a few C++ loops instead of
some fifty ATen calls and their Python.

Shapes: the first compile is specialised to one token (batch 1), the second, made by the batch-2 warm-up, is
dynamic in the number of tokens and serves every other size, so no batch is padded and nothing recompiles
while serving. Both are compiled at start-up on dummy decode batches (token 0 at position 0 writing the
reserved KV slot 0, as the CUDA-graph runner's padding rows do); inductor caches its output on disk, so a
restart with the same model shape compiles much faster.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from sglkit.core.forward_batch import ForwardBatch
from sglkit.layers.compiled_ops import current_forward_batch, register_compiled_modules
from sglkit.runtime.executor.cuda_graph_runner import padding_decode_batch

if TYPE_CHECKING:
    from sglkit.runtime.executor.model_runner import ModelRunner

__all__ = ["CompiledDecodeRunner", "WARMUP_BATCH_SIZES"]

logger = logging.getLogger(__name__)

WARMUP_BATCH_SIZES = (1, 2)  # batch 1 compiles the one-token graph, batch 2 the dynamic one


class CompiledDecodeRunner:
    """The model forward compiled by inductor, for decode batches of 1 to ``max_bs`` requests.

    ``can_run`` says whether a batch is served here; ``forward`` returns its logits [B, V] float32.
    """

    def __init__(self, model_runner: ModelRunner, max_bs: int) -> None:
        self.model = model_runner.model
        self.attn_backend = model_runner.attn_backend
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.device = torch.device(model_runner.device)
        self.max_bs = max_bs
        self.num_runs = 0
        register_compiled_modules(self.model)
        self.compiled = torch.compile(self.model.forward, dynamic=None, fullgraph=False)
        self.warm_up()

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile both graphs now (minutes on a cold cache), with SGLang-style log lines. Backends need no reset
        after the dummy batches: the first real pass is an extend, which starts every backend's decode afresh."""
        logger.info("Compile the decode step with torch.compile begin. This can take up to several minutes.")
        start = time.perf_counter()
        for bs in WARMUP_BATCH_SIZES:
            if bs > self.max_bs:
                break
            forward_batch = padding_decode_batch(self, bs)
            self.attn_backend.init_forward_metadata(forward_batch)
            self._hidden(forward_batch)
        logger.info(
            f"Compile the decode step with torch.compile end. Time elapsed: {time.perf_counter() - start:.2f} s"
        )

    def can_run(self, forward_batch: ForwardBatch) -> bool:
        """True for a decode batch of at most ``max_bs`` requests."""
        return forward_batch.forward_mode.is_decode() and forward_batch.batch_size <= self.max_bs

    def _hidden(self, forward_batch: ForwardBatch) -> torch.Tensor:
        with current_forward_batch(forward_batch):
            return self.compiled(forward_batch.input_ids, forward_batch.positions, forward_batch)  # [B, H]

    def forward(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """The decode batch's logits [B, V] float32 (attention metadata already initialised by the runner)."""
        hidden = self._hidden(forward_batch)
        self.num_runs += 1
        return self.model.compute_logits(hidden[forward_batch.logits_indices])
