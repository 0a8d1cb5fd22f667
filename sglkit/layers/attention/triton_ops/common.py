"""What the Triton attention kernels share (backend -> triton_ops.* -> here): soft-cap tanh, the paged K/V tile
steps of decode and extend, block sizes, the interpreter flag.

Kept free of torch tensors' host values: everything here is a pure function of shapes, dtypes and env flags.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

__all__ = [
    "INTERPRETED",
    "NO_WINDOW",
    "interpreting",
    "needs_upcast",
    "head_block",
    "tanh",
    "paged_scores",
    "accumulate_values",
]

# Fixed at import, as ``triton.jit`` decides at decoration whether a kernel is interpreted: the kernels of these
# modules are interpreted iff TRITON_INTERPRET was set when they were first imported.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")

if INTERPRETED and isinstance(tl.sum, JITFunction):  # triton's own jit helpers were built for a GPU
    raise RuntimeError(
        "TRITON_INTERPRET=1 was set after triton was imported: Triton's interpreter then fails inside kernels. "
        "Set it before anything imports triton (e.g. in the environment of the process)."
    )

NO_WINDOW = 1 << 30  # a sliding window no sequence reaches: how the kernels are told "no window"


def interpreting() -> bool:
    """True when these kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return INTERPRETED


def needs_upcast(dtype: torch.dtype) -> bool:
    """True when ``tl.dot`` inputs must be cast to float32 first: bf16 under the interpreter (its bf16 dot is
    wrong). On a GPU the kernels multiply in the pool's dtype."""
    return interpreting() and dtype == torch.bfloat16


def head_block(head_dim: int) -> int:
    """Block width covering ``head_dim`` (a power of two, at least 16 for ``tl.dot``); extra lanes are masked."""
    return max(16, triton.next_power_of_2(head_dim))


@triton.jit
def tanh(x):
    """tanh(x) from exp(-2|x|) (no overflow; portable across Triton versions and the interpreter)."""
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def paged_scores(
    q,
    k_buf_ptr,
    slots,
    head_off,
    stride_buf_s,
    offs_d,
    mask_d,
    mask_n,
    scaling,
    UPCAST: tl.constexpr,
    LOGIT_CAP: tl.constexpr,
):
    """q [M, BLOCK_D] x the K rows of the pool at ``slots`` [BLOCK_N] -> scores [M, BLOCK_N], scaled and (with a
    logit cap) soft-capped; masked keys are left for the caller to set to -inf."""
    k = tl.load(
        k_buf_ptr + slots[None, :] * stride_buf_s + head_off + offs_d[:, None],
        mask=mask_d[:, None] & mask_n[None, :],
        other=0.0,
    )  # [BLOCK_D, BLOCK_N]
    if UPCAST:
        k = k.to(tl.float32)
    s = tl.dot(q, k) * scaling
    if LOGIT_CAP > 0:
        s = LOGIT_CAP * tanh(s / LOGIT_CAP)
    return s


@triton.jit
def accumulate_values(
    acc, p, alpha, v_buf_ptr, slots, head_off, stride_buf_s, offs_d, mask_d, mask_n, UPCAST: tl.constexpr
):
    """The online-softmax accumulator [M, BLOCK_D] rescaled by ``alpha`` [M] plus probabilities ``p`` [M, BLOCK_N]
    times the V rows of the pool at ``slots``."""
    v = tl.load(
        v_buf_ptr + slots[:, None] * stride_buf_s + head_off + offs_d[None, :],
        mask=mask_n[:, None] & mask_d[None, :],
        other=0.0,
    )  # [BLOCK_N, BLOCK_D]
    if UPCAST:
        return acc * alpha[:, None] + tl.dot(p, v.to(tl.float32))
    return acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
