"""``python -m sglkit.layers.cpu_kernels``: build sglkit's CPU kernels ahead of first use (``make install``)."""

from __future__ import annotations

import logging
import time

from sglkit.layers.cpu_kernels import REQUIRED_FLAGS, cpu_flags, load_kernels


def main() -> None:
    """Build (or find cached) the extension and say what this machine uses it for."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    kernels = load_kernels()
    missing = [f for f in REQUIRED_FLAGS if f not in cpu_flags()]
    if kernels is not None:
        names = ("float32", "bfloat16")
        gemm = ", ".join(n for n in names if kernels.gemm_supported(n))
        extend = ", ".join(n for n in names if kernels.extend_attention_supported(n, 64, 1))
        fused = "; fused norm / RoPE / SiLU / KV write" if kernels.fused_ops_supported() else ""
        print(
            f"sglkit CPU kernels ready ({time.perf_counter() - start:.1f} s): GEMM for {gemm}; decode attention; "
            f"prefill attention for {extend}{fused}."
        )
    elif missing:
        print(
            f"sglkit CPU kernels not used here: the CPU lacks {', '.join(missing)} (oneDNN and SDPA are used)."
        )
    else:
        print("sglkit CPU kernels not used here (disabled or not buildable; oneDNN and SDPA are used).")


if __name__ == "__main__":
    main()
