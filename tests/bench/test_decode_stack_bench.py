"""python -m sglkit.bench.decode_stack (in process, tiny shape): decode steps through the C++ decode stack and
through the layer modules timed in one runner, the ratio layers / stack, the switch restored after; a clear exit
where the stack does not run the model."""

from __future__ import annotations

import pytest

from sglkit.bench import decode_stack as bench
from sglkit.layers.cpu_kernels import load_kernels
from sglkit.layers.cpu_kernels.decode_stack import cpu_decode_stack_enabled, set_cpu_decode_stack


def _stack_runs_here() -> bool:
    kernels = load_kernels()
    return kernels is not None and kernels.fused_ops_supported() and kernels.gemm_supported("bfloat16")


def test_stack_against_layers(tmp_path):
    argv = ["--config", "tiny", "--dtype", "bfloat16", "--batch-size", "2", "--input-len", "12"]
    args = bench.parse_args([*argv, "--steps", "2", "--block", "2"])
    if not _stack_runs_here():
        with pytest.raises(SystemExit, match="does not run"):
            bench.run(args, str(tmp_path))
        return
    old = set_cpu_decode_stack(False)
    lines: list[str] = []
    result = bench.run(args, str(tmp_path), log=lines.append)
    assert result["stack_ms"] > 0 and result["layers_ms"] > 0 and result["layers_over_stack"] > 0
    assert len(lines) == 1 and "layers / stack" in lines[0] and "2 steps a side" in lines[0]
    assert cpu_decode_stack_enabled() is False  # the bench put the setting back
    set_cpu_decode_stack(old)
