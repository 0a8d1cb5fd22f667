"""python -m sglkit.bench.linear_methods (in process, tiny shape): one row per method, ratios against the first,
the quantized methods holding fewer linear bytes."""

from __future__ import annotations

import torch

from sglkit.bench import linear_methods


def test_methods_side_by_side():
    lines: list[str] = []
    argv = ["--config", "tiny", "--methods", "dense", "packed", "int8wo", "int4wo-32"]
    argv += ["--batch-size", "2", "--input-len", "8", "--steps", "2", "--rounds", "1"]
    rows = linear_methods.run(linear_methods.parse_args(argv), log=lines.append)
    assert list(rows) == ["dense", "packed", "int8wo", "int4wo-32"] and len(lines) == 4
    assert rows["dense"]["decode_vs_first"] == 1.0 and rows["dense"]["prefill_vs_first"] == 1.0
    assert all(r["decode_s"] > 0 and r["prefill_s"] > 0 for r in rows.values())
    assert (
        rows["dense"]["linear_weight_mib"]
        > rows["int8wo"]["linear_weight_mib"]
        > rows["int4wo-32"]["linear_weight_mib"]
    )
    assert lines[2].startswith("float32 bs=2") and "int8wo" in lines[2]


def test_packing_kernels_side_by_side():
    """oneDNN's two layouts and sglkit's kernel as methods (the kernel's own tests: tests/layers/cpu_kernels)."""
    from sglkit.layers.cpu_kernels.blocked_gemm import blocked_gemm_available

    methods = ["packed-1", "packed-any"] + (["blocked"] if blocked_gemm_available(torch.float32) else [])
    argv = ["--config", "tiny", "--methods", *methods, "--batch-size", "2", "--input-len", "8"]
    rows = linear_methods.run(linear_methods.parse_args([*argv, "--steps", "2", "--rounds", "1"]), log=print)
    assert list(rows) == methods and all(r["decode_s"] > 0 for r in rows.values())
