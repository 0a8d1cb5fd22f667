"""python -m sglkit.bench.linear_methods (in process, tiny shape): one row per method, ratios against the first,
the quantized methods holding fewer linear bytes."""

from __future__ import annotations

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
