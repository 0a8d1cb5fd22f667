"""Vocabulary embedding and LM head (sglkit/layers/embedding.py): lookup equals nn.Embedding; rank rows load."""

from __future__ import annotations

import pytest
import torch

from sglkit.layers.embedding import ParallelLMHead, VocabParallelEmbedding


def test_lookup_matches_nn_embedding():
    table = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    ours = VocabParallelEmbedding(10, 4)
    ours.weight.weight_loader(ours.weight, table)
    ids = torch.tensor([3, 0, 9, 3])
    assert torch.equal(ours(ids), torch.nn.functional.embedding(ids, table))


@pytest.mark.parametrize("rank", [0, 1])
def test_rank_holds_its_vocab_rows_and_zeros_other_ids(rank):
    table = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    ours = VocabParallelEmbedding(10, 4, tp_rank=rank, tp_size=2)
    ours.weight.weight_loader(ours.weight, table)
    assert torch.equal(ours.weight, table[5 * rank : 5 * rank + 5])
    ids = torch.tensor([1, 7, 4, 5])
    other = VocabParallelEmbedding(10, 4, tp_rank=1 - rank, tp_size=2)
    other.weight.weight_loader(other.weight, table)
    assert torch.equal(ours(ids) + other(ids), table[ids])  # what the all-reduce of the ranks would give


def test_lm_head_loads_rows_and_has_no_forward():
    head = ParallelLMHead(6, 3)
    table = torch.randn(6, 3)
    head.weight.weight_loader(head.weight, table)
    assert torch.equal(head.weight, table)
    with pytest.raises(RuntimeError, match="compute_logits"):
        head(torch.tensor([0]))
    with pytest.raises(RuntimeError, match="size of tensor"):
        head.weight.weight_loader(head.weight, torch.randn(6, 4))
