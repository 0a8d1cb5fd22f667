"""GPU memory budget (model runner -> here, after the weights load): how many KV tokens the pool may hold.

SGLang's rule (0.5, ``handle_gpu_memory_settings`` / ``KVCacheConfigurator._profile_available_bytes``):
``--mem-fraction-static`` is the share of the GPU for the weights + the KV pool; the rest is left for what runs
after the pool is allocated (activations of a prefill chunk, CUDA graphs, logits, attention and sampler
workspaces). Free memory is measured before the weights load (``free_before_load``) and after
(``free_after_load``), and the pool gets

    pool bytes = free_after_load - free_before_load * (1 - mem_fraction_static)

The default fraction follows SGLang's heuristic by GPU memory (MiB):
``reserved = 512 + 1.5 * max(chunked_prefill_size, 2048) + 1024 * tp / 8 + 2 * cuda_graph_max_bs`` (the graph
term only with graphs), at least 10 GiB on a GPU over 60 GiB, and ``fraction = round((gpu - reserved) / gpu, 3)``.

sglkit adds one guard: the slack is never smaller than an estimate of what the runtime allocates after the pool
(``runtime_reserve``, from the model's shape: prefill-chunk activations, full-batch logits, the sampler's
workspace, the Triton backend's graph buffers, the graphs' own memory, a constant). With the default fraction
the slack is the larger; a hand-set fraction close to 1 is what the guard catches (with a warning).
Everything here is arithmetic on numbers, so CPU tests check it for GPUs that are not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "MemoryPlan",
    "ModelShape",
    "NotEnoughMemoryError",
    "default_mem_fraction_static",
    "plan_kv_pool",
    "runtime_reserve",
]

MIB = 1 << 20
GIB = 1 << 30
RUNTIME_OVERHEAD_BYTES = 512 * MIB  # cuBLAS/Triton workspaces, allocator fragmentation (SGLang's constant)
GRAPH_BYTES_PER_BS = 2 * MIB  # SGLang's per-batch-size cost of decode graphs (kernels' and cuBLAS's memory)
# The sampler's dense path beyond the float32 logits copy (budgeted under "logits"): probabilities, the sort's
# values and int64 indices, the top-p cumsum and masks, at their peak together (22; measured on CPU by
# ``python -m sglkit.bench.sampler_memory``), plus a CUDA segmented sort's own buffers (its int64 index input and
# key/value double buffers: 20), plus 2 of margin. ``scripts/gpu_check.sh`` measures the real peak on a GPU.
SAMPLER_TENSOR_BYTES_PER_LOGIT = 22
SORT_WORKSPACE_BYTES_PER_LOGIT = 20
SAMPLER_BYTES_PER_LOGIT = SAMPLER_TENSOR_BYTES_PER_LOGIT + SORT_WORKSPACE_BYTES_PER_LOGIT + 2
FP32_BYTES = 4
INT32_BYTES = 4
TRITON_MAX_KV_SPLITS = (
    16  # the triton backend's most decode splits per request (triton_backend.MAX_KV_SPLITS)
)
MIN_ACTIVATION_TOKENS = 2048  # SGLang sizes activations for at least this many tokens
LARGE_GPU_MIB = 60 * 1024  # over this, SGLang reserves at least LARGE_GPU_MIN_RESERVE_MIB
LARGE_GPU_MIN_RESERVE_MIB = 10 * 1024


class NotEnoughMemoryError(RuntimeError):
    """The budget leaves the KV pool too few tokens for one request (the message says which flags to change)."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of one rank's model that the runtime's buffers scale with."""

    hidden_size: int
    intermediate_size: int
    vocab_size: int
    num_heads: int  # query heads on this rank
    num_kv_heads: int  # KV heads on this rank
    head_dim: int
    dtype_bytes: int  # bytes of one activation element (bf16: 2)

    @classmethod
    def from_config(
        cls, cfg: Any, dtype_bytes: int, tp_size: int = 1, num_kv_heads: int | None = None
    ) -> ModelShape:
        """From a ModelConfig (``intermediate_size`` None: 4 x hidden); heads and MLP width split over ``tp_size``."""
        intermediate = cfg.intermediate_size or 4 * cfg.hidden_size
        return cls(
            hidden_size=cfg.hidden_size,
            intermediate_size=max(1, intermediate // tp_size),
            vocab_size=cfg.vocab_size,
            num_heads=max(1, cfg.num_attention_heads // tp_size),
            num_kv_heads=num_kv_heads or max(1, cfg.num_key_value_heads // tp_size),
            head_dim=cfg.head_dim,
            dtype_bytes=dtype_bytes,
        )

    @property
    def activation_width(self) -> int:
        """Elements one token holds at the peak of a decoder layer: residual, normed input, qkv, attention output
        (4 x hidden + q + 2 kv widths, kept as a bound) and the MLP's gate_up (2 x I) plus its activation (I)."""
        qkv = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        return 4 * self.hidden_size + qkv + 3 * self.intermediate_size


def default_mem_fraction_static(
    gpu_memory_mib: float,
    chunked_prefill_size: int,
    cuda_graph_max_bs: int,
    cuda_graphs: bool,
    tp_size: int = 1,
) -> float:
    """SGLang's default ``--mem-fraction-static`` for a GPU of ``gpu_memory_mib`` (see the module docstring)."""
    reserved = 512 + 1.5 * max(chunked_prefill_size, MIN_ACTIVATION_TOKENS) + tp_size / 8 * 1024
    if cuda_graphs:
        reserved += 2 * cuda_graph_max_bs
    if gpu_memory_mib > LARGE_GPU_MIB:
        reserved = max(reserved, LARGE_GPU_MIN_RESERVE_MIB)
    return round((gpu_memory_mib - reserved) / gpu_memory_mib, 3)


def runtime_reserve(
    shape: ModelShape, max_bs: int, chunk_tokens: int, context_len: int, cuda_graphs: bool
) -> dict[str, int]:
    """Bytes the runtime allocates after the KV pool, by item (an estimate; ``max_bs``: the decode batch the
    logits, sampler and graph buffers are sized for; ``chunk_tokens``: the largest prefill pass)."""
    rows = max(1, max_bs)
    logit_elems = rows * shape.vocab_size
    reserve = {
        "activations": max(1, chunk_tokens) * shape.activation_width * shape.dtype_bytes,
        "logits": logit_elems * (shape.dtype_bytes + FP32_BYTES),  # the LM head's output + its float32 copy
        "sampler": logit_elems * SAMPLER_BYTES_PER_LOGIT,
        "runtime_overhead": RUNTIME_OVERHEAD_BYTES,
    }
    if cuda_graphs:
        splits_rows = rows * shape.num_heads * TRITON_MAX_KV_SPLITS
        reserve["attention_workspace"] = (
            rows * (context_len + 1) * INT32_BYTES  # kv_indices: max_bs x the request table's width
            + splits_rows * (shape.head_dim + 1) * FP32_BYTES  # decode split outputs + their LSEs
        )
        reserve["cuda_graphs"] = (
            rows * GRAPH_BYTES_PER_BS
            + rows * shape.activation_width * shape.dtype_bytes  # + the pool's activations
        )
    return reserve


@dataclass(frozen=True)
class MemoryPlan:
    """The KV pool's size and where the GPU's memory goes (bytes)."""

    total_bytes: int
    free_before_load: int
    free_after_load: int
    mem_fraction_static: float
    slack_bytes: int  # free_before_load * (1 - mem_fraction_static)
    reserve: dict[str, int] = field(default_factory=dict)  # runtime_reserve's estimate, by item
    kv_bytes_per_token: int = 1
    num_tokens: int = 0

    @property
    def weights_bytes(self) -> int:
        """Memory the weights took (free before - free after loading)."""
        return self.free_before_load - self.free_after_load

    @property
    def reserve_bytes(self) -> int:
        """Sum of the runtime estimate."""
        return sum(self.reserve.values())

    @property
    def reserved_bytes(self) -> int:
        """What is left unallocated for the runtime: the larger of the slack and the estimate."""
        return max(self.slack_bytes, self.reserve_bytes)

    @property
    def estimate_binds(self) -> bool:
        """True when the runtime estimate, not the fraction, sized the pool."""
        return self.reserve_bytes > self.slack_bytes

    @property
    def pool_bytes(self) -> int:
        """Bytes of the KV pool (K and V, all layers)."""
        return self.num_tokens * self.kv_bytes_per_token

    def summary(self) -> str:
        """One log line: fraction, weights, pool, slack and the estimate by item, in GB."""
        items = ", ".join(f"{name}={value / GIB:.2f}" for name, value in self.reserve.items())
        return (
            f"mem_fraction_static={self.mem_fraction_static}, total={self.total_bytes / GIB:.2f} GB, "
            f"weights={self.weights_bytes / GIB:.2f} GB, kv pool={self.pool_bytes / GIB:.2f} GB "
            f"({self.num_tokens} tokens), left for the runtime={self.reserved_bytes / GIB:.2f} GB "
            f"(slack {self.slack_bytes / GIB:.2f} GB; estimate {self.reserve_bytes / GIB:.2f} GB: {items})"
        )


def plan_kv_pool(
    shape: ModelShape,
    *,
    total_bytes: int,
    free_before_load: int,
    free_after_load: int,
    kv_bytes_per_token: int,
    context_len: int,
    max_bs: int,
    chunk_tokens: int,
    cuda_graphs: bool = True,
    mem_fraction_static: float | None = None,
    tp_size: int = 1,
    min_tokens: int = 1,
) -> MemoryPlan:
    """Size the KV pool (SGLang's rule plus the runtime guard); raises NotEnoughMemoryError under ``min_tokens``."""
    fraction = mem_fraction_static
    if fraction is None:
        fraction = default_mem_fraction_static(total_bytes / MIB, chunk_tokens, max_bs, cuda_graphs, tp_size)
    reserve = runtime_reserve(shape, max_bs, chunk_tokens, context_len, cuda_graphs)
    plan = MemoryPlan(
        total_bytes=total_bytes,
        free_before_load=free_before_load,
        free_after_load=free_after_load,
        mem_fraction_static=fraction,
        slack_bytes=int(free_before_load * (1.0 - fraction)),
        reserve=reserve,
        kv_bytes_per_token=kv_bytes_per_token,
    )
    num_tokens = max(0, (free_after_load - plan.reserved_bytes) // kv_bytes_per_token)
    plan = replace(plan, num_tokens=int(num_tokens))
    if num_tokens < max(1, min_tokens):
        raise NotEnoughMemoryError(
            f"Not enough memory for the KV cache: room for {num_tokens} tokens, {min_tokens} needed "
            f"({plan.summary()}). Increase --mem-fraction-static or lower --cuda-graph-max-bs / "
            "--chunked-prefill-size (or --context-length; --max-total-tokens sets the pool directly)."
        )
    return plan


CPU_DEFAULT_CHUNKED_PREFILL = 2048


def default_chunked_prefill_size(device: str, gpu_memory_gb: float | None) -> int:
    """The prefill chunk when ``--chunked-prefill-size`` is unset: 2048 on CPU; on CUDA SGLang's default by GPU
    memory (< 20 GB 2048, < 60 GB 4096, < 160 GB 8192 (H100, H200), else 16384; 4096 when unknown)."""
    if not device.startswith("cuda"):
        return CPU_DEFAULT_CHUNKED_PREFILL
    if gpu_memory_gb is None:
        return 4096
    if gpu_memory_gb < 20:
        return 2048
    if gpu_memory_gb < 60:
        return 4096
    if gpu_memory_gb < 160:
        return 8192
    return 16384
