"""sglkit.parallel: state getters and collectives, single process and on 2 spawned gloo ranks."""

from __future__ import annotations

import pytest
import torch
from spawn import run_on_ranks

from sglkit import parallel


def test_single_process_defaults_and_identities():
    assert not parallel.model_parallel_is_initialized()
    assert parallel.get_tp_rank() == 0 and parallel.get_tp_size() == 1
    assert parallel.get_tp_group() is None and parallel.get_cpu_group() is None
    x = torch.arange(6.0).view(2, 3)
    assert parallel.tensor_model_parallel_all_reduce(x) is x
    assert parallel.tensor_model_parallel_all_gather(x, dim=0) is x
    assert parallel.broadcast_object({"a": 1}) == {"a": 1}
    assert parallel.all_reduce_min_int(7) == 7
    parallel.destroy_model_parallel()  # no-op


def _collectives(rank: int) -> dict:
    x = torch.full((2, 3), float(rank + 1))
    gathered_last = parallel.tensor_model_parallel_all_gather(torch.full((2, 1), float(rank)), dim=-1)
    gathered_first = parallel.tensor_model_parallel_all_gather(torch.full((1, 2), float(rank)), dim=0)
    obj = parallel.broadcast_object({"batch": [rank, "x"]} if rank == 0 else None, src=0)
    obj_from_1 = parallel.broadcast_object(("one", rank), src=1)
    return {
        "initialized": parallel.model_parallel_is_initialized(),
        "rank": parallel.get_tp_rank(),
        "size": parallel.get_tp_size(),
        "has_groups": parallel.get_tp_group() is not None and parallel.get_cpu_group() is not None,
        "sum": parallel.tensor_model_parallel_all_reduce(x),
        "gathered_last": gathered_last,
        "gathered_first": gathered_first,
        "obj": obj,
        "obj_from_1": obj_from_1,
        "min": parallel.all_reduce_min_int(100 - rank * 30),
    }


def test_collectives_on_two_gloo_ranks():
    results = run_on_ranks(_collectives, timeout_s=60)
    for rank, r in enumerate(results):
        assert r["initialized"] and r["rank"] == rank and r["size"] == 2 and r["has_groups"]
        torch.testing.assert_close(r["sum"], torch.full((2, 3), 3.0))
        torch.testing.assert_close(r["gathered_last"], torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
        torch.testing.assert_close(r["gathered_first"], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        assert r["obj"] == {"batch": [0, "x"]}
        assert r["obj_from_1"] == ("one", 1)
        assert r["min"] == 70


def _fails_on_rank_1(rank: int) -> None:
    if rank == 1:
        raise RuntimeError("rank 1 failed")
    return None


def test_a_failing_rank_fails_the_run():
    with pytest.raises(Exception, match="rank 1 failed"):
        run_on_ranks(_fails_on_rank_1, timeout_s=60)


def _hangs_on_rank_1(rank: int) -> None:
    if rank == 1:
        import time

        time.sleep(120)


def test_a_hung_rank_is_killed_at_the_deadline():
    with pytest.raises(TimeoutError):
        run_on_ranks(_hangs_on_rank_1, timeout_s=8)
