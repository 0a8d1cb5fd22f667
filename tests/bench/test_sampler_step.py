"""python -m sglkit.bench.sampler_step on tiny sizes: both sides run, sample the same workload, print the ratio."""

from __future__ import annotations

import argparse

import pytest
import torch

from sglkit.bench.sampler_step import WORKLOADS, _Side, main


@pytest.mark.parametrize("workload", WORKLOADS)
def test_both_sides_run_and_the_ratio_is_printed(workload, capsys):
    argv = ["--workload", workload, "--batch-size", "4", "--vocab-size", "300", "--prompt-len", "8"]
    result = main([*argv, "--steps", "6"])
    assert result["readback_ms"] > 0 and result["dense_ms"] > 0
    assert result["dense_over_readback"] == pytest.approx(result["dense_ms"] / result["readback_ms"])
    out = capsys.readouterr().out
    assert f"sampler step, {workload}, batch 4, vocab 300" in out and "ratio" in out


def test_greedy_sides_pick_the_same_tokens():
    """Greedy has no randomness: the read-back and the dense path must choose identical tokens."""
    args = argparse.Namespace(workload="greedy", batch_size=3, prompt_len=5, vocab_size=50)
    readback, dense = _Side(args, cpu_readback=True), _Side(args, cpu_readback=False)
    logits = torch.randn(3, 50)
    readback.step(logits)
    dense.step(logits)
    assert [r.output_ids for r in readback.reqs] == [r.output_ids for r in dense.reqs]
    assert [r.output_ids[0] for r in readback.reqs] == logits.argmax(-1).tolist()
