"""What the Triton attention kernels share (backend -> triton_ops.* -> here): soft-cap tanh, block sizes, interpreter.

Kept free of torch tensors' host values: everything here is a pure function of shapes, dtypes and env flags.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

__all__ = ["INTERPRETED", "NO_WINDOW", "interpreting", "needs_upcast", "head_block", "tanh"]

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
