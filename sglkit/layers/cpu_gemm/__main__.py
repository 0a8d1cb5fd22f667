"""``python -m sglkit.layers.cpu_gemm``: build sglkit's CPU GEMM kernel ahead of first use (``make install``)."""

from __future__ import annotations

import logging
import time

from sglkit.layers.cpu_gemm import REQUIRED_FLAGS, cpu_flags, load_kernel


def main() -> None:
    """Build (or find cached) the kernel and say whether this machine uses it."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    kernel = load_kernel()
    missing = [f for f in REQUIRED_FLAGS if f not in cpu_flags()]
    if kernel is not None:
        print(f"sglkit CPU GEMM kernel ready ({time.perf_counter() - start:.1f} s).")
    elif missing:
        print(
            f"sglkit CPU GEMM kernel not used here: the CPU lacks {', '.join(missing)} (oneDNN packing is used)."
        )
    else:
        print("sglkit CPU GEMM kernel not used here (disabled or not buildable; oneDNN packing is used).")


if __name__ == "__main__":
    main()
