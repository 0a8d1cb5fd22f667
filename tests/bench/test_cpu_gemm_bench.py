"""python -m sglkit.bench.cpu_gemm (in process, small shapes, few copies): one row per (shape, rows), both sides
timed, the ratio oneDNN / sglkit; a clear exit where the kernel does not run."""

from __future__ import annotations

import pytest
import torch

from sglkit.bench import cpu_gemm
from sglkit.layers.cpu_kernels.blocked_gemm import blocked_gemm_available


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernel_against_onednn(dtype):
    if not blocked_gemm_available(getattr(torch, dtype)):
        with pytest.raises(SystemExit, match="does not run"):
            cpu_gemm.main(["--dtype", dtype])
        return
    lines: list[str] = []
    argv = ["--dtype", dtype, "--shapes", "o", "down", "--rows", "1", "13", "--copies", "2", "--rounds", "2"]
    rows = cpu_gemm.run(cpu_gemm.parse_args(argv), log=lines.append)
    assert [(r["shape"], r["rows"]) for r in rows] == [("o", 1), ("o", 13), ("down", 1), ("down", 13)]
    assert all(r["onednn_ms"] > 0 and r["sglkit_ms"] > 0 and r["speedup"] > 0 for r in rows)
    assert len(lines) == 4 and "oneDNN / sglkit" in lines[0] and "[960 x 2560]" in lines[2]
