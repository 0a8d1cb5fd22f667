"""The sampler's memory per logit (sglkit/bench/sampler_memory.py): the tracker counts live storages exactly, and
the dense path's own tensors fit the share of the memory budget measured for them."""

from __future__ import annotations

import torch

from sglkit.bench.sampler_memory import LiveTensorBytes, main, measure_sampler_memory
from sglkit.runtime.executor.memory_budget import (
    FP32_BYTES,
    SAMPLER_BYTES_PER_LOGIT,
    SAMPLER_TENSOR_BYTES_PER_LOGIT,
)


def test_live_tensor_bytes_counts_storages_once_until_their_last_view_dies():
    a = torch.randn(100, 100)  # made before the tracker: not counted
    with LiveTensorBytes() as tracker:
        b = a * 2  # 40,000 bytes
        row = b[0]  # a view: no new storage
        assert tracker.live == 40_000
        del b
        assert tracker.live == 40_000  # the view keeps the storage alive
        del row
        assert tracker.live == 0
        ranked = a.sort(dim=-1).values  # values (40,000) and int64 indices (80,000) live together
        assert tracker.peak == 120_000 and tracker.live == 40_000
        del ranked


def test_the_dense_sampler_fits_the_measured_share_of_the_budget(capsys):
    result = measure_sampler_memory(8, 3000, "cpu")
    own = result["peak_per_logit"] - FP32_BYTES  # the float32 logits copy is budgeted under "logits"
    per_row_vectors = 0.05  # [B]-sized tensors (ids, thresholds), a few bytes per row over 3000 logits
    assert FP32_BYTES < result["peak_per_logit"] and own <= SAMPLER_TENSOR_BYTES_PER_LOGIT + per_row_vectors
    assert result["within_budget"] and result["budget_per_logit"] == SAMPLER_BYTES_PER_LOGIT + FP32_BYTES
    main(["--batch-size", "2", "--vocab-size", "600", "--device", "cpu"])
    assert "B/logit for 2 x 600" in capsys.readouterr().out
