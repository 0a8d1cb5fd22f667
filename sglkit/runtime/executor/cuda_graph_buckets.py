"""CUDA-graph batch buckets (model runner -> here): which decode batch sizes are captured, which one a batch pads to.

A decode batch of ``bs`` requests replays the graph of the smallest captured size >= bs; the extra rows are
padding (they write the reserved KV slot 0 and read a length-1 dummy sequence). Captured sizes, as the issue and
SGLang's older list: 1, 2, 4, 8, 16, 24, 32, then every 16 up to ``--cuda-graph-max-bs`` (always included).
SGLang 0.5's own list is denser (1, 2, 4, 8, 12, 16..256 every 8, ...): more graphs, less padding.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = [
    "SMALL_BATCH_SIZES",
    "capture_batch_sizes",
    "default_cuda_graph_max_bs",
    "padded_batch_size",
]

SMALL_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32)
LARGE_STEP = 16
UNKNOWN_GPU_MAX_BS = 160  # SGLang's default when the GPU's memory is unknown


def capture_batch_sizes(max_bs: int) -> list[int]:
    """Sorted decode batch sizes to capture, up to and including ``max_bs`` (>= 1)."""
    if max_bs < 1:
        raise ValueError(f"cuda_graph_max_bs must be a positive integer, got {max_bs!r}.")
    sizes = [bs for bs in SMALL_BATCH_SIZES if bs <= max_bs]
    sizes += range(SMALL_BATCH_SIZES[-1] + LARGE_STEP, max_bs + 1, LARGE_STEP)
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


def padded_batch_size(capture_bs: list[int], bs: int) -> int | None:
    """The captured size a batch of ``bs`` rows pads to (the smallest >= bs), or None when it is too big."""
    if bs < 1:
        return None
    i = bisect_left(capture_bs, bs)
    return capture_bs[i] if i < len(capture_bs) else None


def default_cuda_graph_max_bs(gpu_memory_gb: float | None, max_running_requests: int | None = None) -> int:
    """SGLang's default ``--cuda-graph-max-bs`` for one GPU (tp < 4) of ``gpu_memory_gb``, capped by
    ``max_running_requests``: < 20 GB 8, < 35 GB 48, < 60 GB 32, < 160 GB (H100, H200) 256, else 512;
    unknown memory 160."""
    if gpu_memory_gb is None:
        max_bs = UNKNOWN_GPU_MAX_BS
    elif gpu_memory_gb < 20:
        max_bs = 8
    elif gpu_memory_gb < 35:
        max_bs = 48
    elif gpu_memory_gb < 60:
        max_bs = 32
    elif gpu_memory_gb < 160:
        max_bs = 256
    else:
        max_bs = 512
    if max_running_requests is not None:
        max_bs = min(max_bs, max_running_requests)
    return max(1, max_bs)
