"""python -m sglkit.bench.fused_ops (in process, tiny shape): decode steps with the fused C++ ops and with the
torch code timed in one runner, the ratio torch / fused, the switch restored after; a clear exit where the ops
do not run."""

from __future__ import annotations

import pytest

from sglkit.bench import fused_ops as bench
from sglkit.layers.cpu_kernels import load_kernels
from sglkit.layers.cpu_kernels.fused_ops import set_cpu_fused_ops


def test_fused_against_torch(tmp_path):
    argv = ["--config", "tiny", "--dtype", "bfloat16", "--batch-size", "2", "--input-len", "12"]
    args = bench.parse_args([*argv, "--steps", "2", "--block", "2"])
    kernels = load_kernels()
    if kernels is None or not kernels.fused_ops_supported():
        with pytest.raises(SystemExit, match="do not run"):
            bench.run(args, str(tmp_path))
        return
    old = set_cpu_fused_ops(False)
    lines: list[str] = []
    result = bench.run(args, str(tmp_path), log=lines.append)
    assert result["fused_ms"] > 0 and result["torch_ms"] > 0 and result["torch_over_fused"] > 0
    assert len(lines) == 1 and "torch / fused" in lines[0] and "2 steps a side" in lines[0]
    assert set_cpu_fused_ops(old) is False  # the bench put the setting back
