"""Model layers, CPU: sglkit's own GEMM (``Linear`` / logits head -> ``blocked_linear`` -> C++, AVX-512).

oneDNN's packed GEMV streams the weights at ~16-26 GB/s on a 2-core AVX-512 EPYC, where a plain read loop reaches
~30 GB/s, and its layout for one row is not the one for a batch (docs/cpu.md). ``blocked_gemm.cpp`` holds a
weight as ``[ceil(N/16), K/G, 16, G]`` (16 output rows x G input columns per 64-byte vector; G = 2 for bfloat16,
the operand of ``vdpbf16ps``, 1 for float32, of an FMA): every block is one contiguous stream, read once per
call whatever the batch, so one layout serves decode (bandwidth) and prefill (compute) alike. ``BlockedWeight``
is that layout; ``block_weight`` / ``BlockedWeight.to_dense`` convert exactly.

The kernel is compiled for this CPU (``-march=native``) by ``torch.utils.cpp_extension`` on first use (about 30 s,
once per machine: ``python -m sglkit.layers.cpu_gemm`` does it ahead, as ``make install`` does) and cached under
a name that hashes the source, flags, the CPU's feature flags and torch's version. float32 needs AVX-512
(F/BW/VL), bfloat16 also AVX512-BF16; elsewhere, or with ``SGLKIT_CPU_GEMM=onednn``, the layers keep oneDNN
packing, as they do (after one log line) where it cannot be built (no compiler, no ninja).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "BLOCK",
    "BlockedWeight",
    "block_weight",
    "blocked_gemm_available",
    "blocked_linear",
    "cpu_flags",
    "load_kernel",
]

BLOCK = 16  # output rows per block (one AVX-512 register of fp32 accumulators)
SOURCE = Path(__file__).with_name("blocked_gemm.cpp")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl")  # float32; bfloat16 also needs avx512_bf16
GROUP = {torch.bfloat16: 2, torch.float32: 1}  # input columns per weight lane (a vdpbf16ps pair, or one)
DISABLE_ENV = "SGLKIT_CPU_GEMM"  # "onednn" (or "0"): never use this kernel
CFLAGS = [
    "-O3",
    "-march=native",
    "-fopenmp",
]  # -fopenmp: ATen's parallel_for is inline OpenMP (torch's libgomp)

_lock = threading.Lock()
_kernel: ModuleType | None = None
_tried = False


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (from /proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _extension_name(flags: frozenset[str]) -> str:
    digest = hashlib.sha1(SOURCE.read_bytes())
    digest.update(" ".join(sorted(flags)).encode())
    digest.update(" ".join([*CFLAGS, torch.__version__]).encode())
    return f"sglkit_blocked_gemm_{digest.hexdigest()[:12]}"


def _build(flags: frozenset[str]) -> ModuleType:
    from torch.utils import cpp_extension

    name = _extension_name(flags)
    bin_dir = str(Path(sys.executable).parent)  # the venv's ninja, where PATH lacks it
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path if path else bin_dir
    logger.info(f"Loading sglkit's CPU GEMM kernel {name} (compiled once per machine, ~30 s)...")
    return cpp_extension.load(name, [str(SOURCE)], extra_cflags=CFLAGS, verbose=False)


def load_kernel() -> ModuleType | None:
    """The compiled kernel module, built on first call; None where this CPU or machine cannot run it."""
    global _kernel, _tried
    with _lock:
        if _tried:
            return _kernel
        _tried = True
        if os.environ.get(DISABLE_ENV, "").lower() in ("onednn", "0", "off"):
            return None
        flags = cpu_flags()
        if platform.machine() not in ("x86_64", "AMD64") or not all(f in flags for f in REQUIRED_FLAGS):
            return None
        try:
            module = _build(flags)
        except (RuntimeError, OSError, ImportError, ValueError) as e:
            logger.warning(
                f"sglkit's CPU GEMM kernel could not be built ({e}); oneDNN packing is used instead."
            )
            return None
        _kernel = module
        return _kernel


def blocked_gemm_available(dtype: torch.dtype = torch.bfloat16) -> bool:
    """Whether ``blocked_linear`` runs ``dtype`` weights here (kernel built; bfloat16 needs AVX512-BF16)."""
    kernel = load_kernel()
    return dtype in GROUP and kernel is not None and kernel.supported(str(dtype).removeprefix("torch."))


class BlockedWeight:
    """A [N, K] weight in the kernel's layout: ``data`` [ceil(N/16), K/G, 16, G] (G: 2 for bfloat16, 1 for
    float32), rows past N zero."""

    def __init__(self, data: torch.Tensor, out_features: int, in_features: int) -> None:
        self.data = data
        self.out_features = out_features
        self.in_features = in_features

    @property
    def dtype(self) -> torch.dtype:
        """The weight's dtype."""
        return self.data.dtype

    def to_dense(self) -> torch.Tensor:
        """Back to the plain [N, K] weight (exact)."""
        blocks, steps, _, group = self.data.shape
        dense = self.data.permute(0, 2, 1, 3).reshape(blocks * BLOCK, steps * group)
        return dense[: self.out_features].contiguous()

    def nbytes(self) -> int:
        """Bytes held (the padding rows included)."""
        return self.data.numel() * self.data.element_size()


def block_weight(weight: torch.Tensor) -> BlockedWeight | None:
    """weight: [N, K] -> its blocked copy, or None where the kernel cannot take it (not a CPU tensor, a dtype
    this CPU's kernel does not run, bfloat16 with K odd)."""
    if weight.device.type != "cpu" or weight.dim() != 2 or not blocked_gemm_available(weight.dtype):
        return None
    n, k = weight.shape
    group = GROUP[weight.dtype]
    if k % group or n == 0:
        return None
    blocks = -(-n // BLOCK)
    padded = F.pad(weight.detach(), (0, 0, 0, blocks * BLOCK - n))  # [blocks * 16, K]
    data = padded.view(blocks, BLOCK, k // group, group).permute(0, 2, 1, 3).contiguous()
    return BlockedWeight(data, n, k)


def blocked_linear(x: torch.Tensor, weight: BlockedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x: [..., K] -> x W^T (+ bias): [..., N], in the weight's dtype, through the compiled kernel."""
    kernel = load_kernel()
    if kernel is None:
        raise RuntimeError("blocked_linear: sglkit's CPU GEMM kernel is not available on this machine.")
    lead = x.shape[:-1]
    out = kernel.blocked_linear(x.reshape(-1, x.shape[-1]), weight.data, weight.out_features, bias)
    return out.view(*lead, weight.out_features)
