"""Tensor-parallel layers on two spawned gloo ranks equal their tp_size 1 selves: row-parallel all-reduce with the
bias added once, padded vocabulary shards (embedding and gathered logits), the sharded q/k norm with split and
replicated shards, the MoE block's single all-reduce. Single-process checks of the loaders' padding too."""

from __future__ import annotations

import pytest
import torch
from spawn import run_on_ranks

from sglkit.layers.embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
    pad_vocab_size,
    vocab_parallel_logits,
)
from sglkit.layers.linear import ColumnParallelLinear, RowParallelLinear
from sglkit.layers.moe import SparseMoeBlock
from sglkit.layers.norm import Float32WeightRMSNorm, ShardedRMSNorm

H, V = 8, 13  # a vocabulary not divisible by 2


def _tensors() -> dict[str, torch.Tensor]:
    """The full (checkpoint) tensors and inputs, the same in every process."""
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(5, H, generator=g),
        "w_col": torch.randn(12, H, generator=g),
        "b_col": torch.randn(12, generator=g),
        "w_row": torch.randn(H, 12, generator=g),
        "b_row": torch.randn(H, generator=g),
        "table": torch.randn(V, H, generator=g),
        "ids": torch.tensor([0, 6, 7, 12, 3, 12]),
        "q": torch.randn(5, 12, generator=g),
        "k": torch.randn(5, 4, generator=g),
        "w_qnorm": torch.rand(12, generator=g) + 0.5,
        "w_knorm": torch.rand(4, generator=g) + 0.5,
        "gate": torch.randn(4, H, generator=g),
        "w13": torch.randn(4, 2 * 6, H, generator=g),
        "w2": torch.randn(4, H, 6, generator=g),
    }


def _load(module, **params) -> None:
    for name, tensor in params.items():
        param = getattr(module, name)
        param.weight_loader(param, tensor)


def _moe() -> SparseMoeBlock:
    t = _tensors()
    block = SparseMoeBlock(num_experts=4, top_k=2, hidden_size=H, intermediate_size=6)
    block.gate.weight.data.copy_(t["gate"])
    _load(block.experts, w13_weight=t["w13"], w2_weight=t["w2"])
    return block


def _layer_outputs(rank: int) -> dict[str, torch.Tensor]:
    """Each layer built from the parallel state (tp 2 on a rank, tp 1 in pytest) applied to the same inputs."""
    t = _tensors()
    col = ColumnParallelLinear(H, 12)
    _load(col, weight=t["w_col"], bias=t["b_col"])
    row = RowParallelLinear(12, H)
    _load(row, weight=t["w_row"], bias=t["b_row"])
    hidden = col(t["x"])  # [5, 12 / tp]: this rank's columns feed the row-parallel layer as in an MLP
    emb = VocabParallelEmbedding(V, H)
    _load(emb, weight=t["table"])
    head = ParallelLMHead(V, H)
    _load(head, weight=t["table"])
    tp = col.tp_size
    q_norm = ShardedRMSNorm(12 // tp, 1e-6, None, col.tp_rank, tp, tp)  # split shards
    k_norm = ShardedRMSNorm(4, 1e-6, None, 0, 1, tp)  # one shard, replicated on every rank
    _load(q_norm, weight=t["w_qnorm"])
    _load(k_norm, weight=t["w_knorm"])
    q = t["q"].chunk(tp, dim=-1)[col.tp_rank]
    return {
        "row": row(hidden),
        "embedding": emb(t["ids"]),
        "logits": vocab_parallel_logits(t["x"], head),
        "tied_logits": vocab_parallel_logits(t["x"], emb),
        "q_norm": q_norm(q),  # [5, 12 / tp]
        "k_norm": k_norm(t["k"]),
        "moe": _moe()(t["x"]),
        "tp": torch.tensor([col.tp_rank, tp, emb.num_embeddings_padded]),
    }


def test_layers_on_two_ranks_equal_tp1():
    ref = _layer_outputs(0)
    ranks = run_on_ranks(_layer_outputs, timeout_s=90)
    t = _tensors()
    full_q = Float32WeightRMSNorm(12)
    full_q.weight.data.copy_(t["w_qnorm"])
    for rank, out in enumerate(ranks):
        assert out["tp"].tolist() == [rank, 2, 14]
        for name in ("row", "embedding", "logits", "tied_logits", "k_norm", "moe"):
            torch.testing.assert_close(out[name], ref[name], atol=1e-5, rtol=1e-5, msg=name)
        assert out["logits"].shape == (5, V) and out["logits"].dtype == torch.float32
        # this rank's q heads, normalised over all ranks' width
        torch.testing.assert_close(out["q_norm"], full_q(t["q"]).chunk(2, dim=-1)[rank], atol=1e-5, rtol=1e-5)


def test_padded_vocab_shards_load_real_rows_and_zero_padding():
    table = torch.randn(V, H)
    assert pad_vocab_size(V, 2) == 14 and pad_vocab_size(V, 1) == V and pad_vocab_size(12, 5) == 15
    shards = []
    for rank in range(2):
        emb = VocabParallelEmbedding(V, H, tp_rank=rank, tp_size=2)
        emb.weight.weight_loader(emb.weight, table)
        assert emb.weight.shape == (7, H) and (emb.vocab_start, emb.vocab_end) == (7 * rank, 7 * rank + 7)
        shards.append(emb.weight.detach())
    assert torch.equal(torch.cat(shards)[:V], table)
    assert torch.equal(shards[1][-1], torch.zeros(H))  # the padding row
    emb = VocabParallelEmbedding(V, H, tp_rank=0, tp_size=2)
    with pytest.raises(ValueError, match="13 rows"):
        emb.weight.weight_loader(emb.weight, torch.randn(14, H))


def test_row_parallel_without_reduce_refuses_a_bias():
    with pytest.raises(ValueError, match="reduce_results=False"):
        RowParallelLinear(4, 4, bias=True, reduce_results=False)
    layer = RowParallelLinear(4, 2, bias=False, tp_rank=1, tp_size=2, reduce_results=False)
    assert layer.weight.shape == (2, 2)


def test_layers_default_to_the_parallel_state():
    col = ColumnParallelLinear(4, 6)
    assert (col.tp_rank, col.tp_size) == (0, 1)
    assert (VocabParallelEmbedding(5, 2).num_embeddings_per_partition) == 5
