"""python -m sglkit.bench.decode_attention (in process, tiny shape): both decode paths timed in one runner, the
ratio SDPA / kernel, the backend left on the kernel; a clear exit where the kernel does not run."""

from __future__ import annotations

import pytest
import torch

from sglkit.bench import decode_attention
from sglkit.layers.cpu_kernels.decode_attention import decode_attention_available


def test_kernel_against_sdpa(tmp_path):
    argv = ["--config", "tiny", "--dtype", "float32", "--batch-size", "3", "--input-len", "20"]
    args = decode_attention.parse_args([*argv, "--steps", "2", "--block", "2"])
    if not decode_attention_available(torch.float32, torch.float32, 64, 1):
        with pytest.raises(SystemExit, match="does not run"):
            decode_attention.run(args, str(tmp_path))
        return
    lines: list[str] = []
    result = decode_attention.run(args, str(tmp_path), log=lines.append)
    assert result["kernel_ms"] > 0 and result["sdpa_ms"] > 0 and result["sdpa_over_kernel"] > 0
    assert len(lines) == 1 and "SDPA / kernel" in lines[0] and "2 steps a side" in lines[0]
