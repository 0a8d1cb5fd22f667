"""python -m sglkit.bench.compiled_decode on the tiny shape: both sides run, the compiled one really decodes."""

from __future__ import annotations

import pytest

from sglkit.bench.compiled_decode import main

pytestmark = pytest.mark.slow  # compiles the tiny model (~15 s)


def test_both_sides_run_and_the_ratio_is_printed(capsys):
    result = main(
        ["--config", "tiny", "--dtype", "float32", "--batch-size", "2", "--input-len", "8", "--steps", "4"]
    )
    assert result["eager_ms"] > 0 and result["compiled_ms"] > 0
    assert result["eager_over_compiled"] == pytest.approx(result["eager_ms"] / result["compiled_ms"])
    assert result["compiled_runs"] == 4  # the compiled side's steps, none of the eager ones
    out = capsys.readouterr().out
    assert "decode step, tiny float32, batch 2, 4 steps a side" in out and "ratio" in out
