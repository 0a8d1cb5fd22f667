"""python -m sglkit.bench.prefill_attention (in process, tiny shape): both extend paths timed in one runner, the
ratio SDPA / kernel and the kernel's own attention time, the backend left on the kernel; a clear exit where the
kernel does not run."""

from __future__ import annotations

import pytest
import torch

from sglkit.bench import prefill_attention
from sglkit.layers.cpu_kernels.extend_attention import extend_attention_available


def test_kernel_against_sdpa(tmp_path):
    argv = [
        "--config",
        "tiny",
        "--dtype",
        "float32",
        "--batch-size",
        "2",
        "--input-len",
        "40",
        "--rounds",
        "1",
    ]
    args = prefill_attention.parse_args(argv)
    if not extend_attention_available(torch.float32, torch.float32, 16, 1):
        with pytest.raises(SystemExit, match="does not run"):
            prefill_attention.run(args, str(tmp_path))
        return
    lines: list[str] = []
    result = prefill_attention.run(args, str(tmp_path), log=lines.append)
    assert result["kernel_ms"] > 0 and result["sdpa_ms"] > 0 and result["sdpa_over_kernel"] > 0
    assert 0 < result["kernel_attention_ms"] < result["kernel_ms"]
    assert len(lines) == 1 and "SDPA / kernel" in lines[0] and "1 passes a side" in lines[0]
