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


def test_the_logits_use_a_packed_copy_equal_to_the_plain_matrix():
    """CPU float32: the LM head's oneDNN copy gives F.linear's logits; the plain weight stays for lookups; a
    weight change followed by ``pack_linear_weights`` (what every weight load does) re-packs it."""
    from sglkit.layers.embedding import vocab_parallel_logits
    from sglkit.layers.linear import pack_linear_weights

    gen = torch.Generator().manual_seed(2)
    head = VocabParallelEmbedding(300, 16)
    head.weight.weight_loader(head.weight, torch.randn(300, 16, generator=gen))
    hidden = torch.randn(5, 16, generator=gen)
    with torch.inference_mode():
        plain = vocab_parallel_logits(hidden, head)
        if not head.pack_for_logits():
            pytest.skip("oneDNN does not pack float32 weights on this machine")
        torch.testing.assert_close(vocab_parallel_logits(hidden, head), plain, rtol=1e-5, atol=1e-5)
        assert head.weight.shape == (300, 16)  # the plain matrix is still there for embedding lookups

        class Model(torch.nn.Module):
            logits_head = head

        head.weight.data.mul_(2)
        assert pack_linear_weights(Model()) == 0  # no Linear layers; the head is re-packed all the same
        torch.testing.assert_close(vocab_parallel_logits(hidden, head), 2 * plain, rtol=1e-5, atol=1e-4)
