"""``python -m sglkit.layers.cpu_kernels``: build sglkit's CPU kernels ahead of first use (``make install``)."""

from __future__ import annotations

import logging
import time

import torch

from sglkit.layers.cpu_kernels import REQUIRED_FLAGS, cpu_flags, load_kernels


def main() -> None:
    """Build (or find cached) the extension and say what this machine uses it for."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    kernels = load_kernels()
    missing = [f for f in REQUIRED_FLAGS if f not in cpu_flags()]
    if kernels is not None:
        dtypes = [d for d in (torch.float32, torch.bfloat16) if kernels.gemm_supported(str(d)[6:])]
        names = ", ".join(str(d)[6:] for d in dtypes)
        print(
            f"sglkit CPU kernels ready ({time.perf_counter() - start:.1f} s): GEMM for {names}; decode attention."
        )
    elif missing:
        print(
            f"sglkit CPU kernels not used here: the CPU lacks {', '.join(missing)} (oneDNN and SDPA are used)."
        )
    else:
        print("sglkit CPU kernels not used here (disabled or not buildable; oneDNN and SDPA are used).")


if __name__ == "__main__":
    main()
