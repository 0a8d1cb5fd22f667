"""Benchmarks: the sampler's peak memory per logit on the accelerator's dense path, against the memory budget.

``runtime_reserve`` (``runtime/executor/memory_budget.py``) keeps ``SAMPLER_BYTES_PER_LOGIT`` bytes per logit of
a full decode batch free for the sampler. This measures what one ``Sampler(cpu_readback=False).sample`` call
really allocates beyond its input logits, for the heaviest parameters (penalties, top_k + top_p + min_p, seeded
rows): on CUDA with the allocator's peak (``torch.cuda.max_memory_allocated``, kernel workspaces included), on
CPU with ``LiveTensorBytes``, which counts every tensor the sampler's ops create while it lives (a CUDA sort's
internal buffers are not tensors, hence ``SORT_WORKSPACE_BYTES_PER_LOGIT`` in the budget). The float32 copy of
the logits is part of the peak but budgeted under ``logits``; ``budget_per_logit`` adds it back.
``python -m sglkit.bench.sampler_memory --batch-size 256 --vocab-size 128256 --device cuda``;
``scripts/gpu_check.sh`` records it on the GPU.
"""

from __future__ import annotations

import argparse
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveTensorBytes", "main", "measure_sampler_memory"]


class LiveTensorBytes(TorchDispatchMode):
    """While active, tracks the bytes of storages created by dispatched ops that are still alive, and the peak.

    A storage is counted once however many views share it, and released when the last of them dies.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._tracked: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self._tracked:
                continue
            self._tracked.add(key)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, key, nbytes)
        return out


def measure_sampler_memory(
    batch_size: int, vocab_size: int, device: str = "cpu", dtype: torch.dtype = torch.bfloat16
) -> dict[str, Any]:
    """Peak bytes of one dense-path ``sample`` call on ``batch_size`` x ``vocab_size`` logits of ``dtype``."""
    from sglkit.bench.sampler_step import make_reqs
    from sglkit.runtime.executor.memory_budget import FP32_BYTES, SAMPLER_BYTES_PER_LOGIT
    from sglkit.runtime.executor.sampling import PenaltyCounts, Sampler, SamplingBatchInfo

    reqs = make_reqs("sampled", batch_size, 16, vocab_size)
    info = SamplingBatchInfo.from_reqs(reqs, vocab_size, {0}, device, PenaltyCounts(vocab_size, device))
    logits = torch.randn(batch_size, vocab_size, device=device).to(dtype)  # [B, V]
    sampler = Sampler(cpu_readback=False)
    sampler.sample(logits, info)  # warm-up: lazy workspaces (cuBLAS, cub) are not the sampler's per-step cost
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        sampler.sample(logits, info)
        torch.cuda.synchronize()
        peak, method = torch.cuda.max_memory_allocated() - base, "torch.cuda.max_memory_allocated"
    else:
        with LiveTensorBytes() as tracker:
            sampler.sample(logits, info)
        peak, method = tracker.peak, "LiveTensorBytes (tensors only)"
    logits_count = batch_size * vocab_size
    return {
        "batch_size": batch_size,
        "vocab_size": vocab_size,
        "device": device,
        "method": method,
        "peak_bytes": peak,
        "peak_per_logit": peak / logits_count,
        "budget_per_logit": SAMPLER_BYTES_PER_LOGIT + FP32_BYTES,
        "within_budget": peak <= (SAMPLER_BYTES_PER_LOGIT + FP32_BYTES) * logits_count,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Entry point of ``python -m sglkit.bench.sampler_memory``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    result = measure_sampler_memory(args.batch_size, args.vocab_size, args.device)
    print(
        f"sampler peak on {result['device']} ({result['method']}): {result['peak_per_logit']:.1f} B/logit "
        f"for {args.batch_size} x {args.vocab_size}; budget {result['budget_per_logit']} B/logit "
        f"({'within' if result['within_budget'] else 'OVER'})"
    )
    return result


if __name__ == "__main__":
    main()
