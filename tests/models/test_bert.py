"""BertModel (sglkit/models/bert.py): last hidden states equal HF transformers' BertModel, packed or alone."""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import load_file

from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.linear import pack_linear_weights
from sglkit.models import load_model
from sglkit.models.bert import BertModel
from tests.embedding_reference import tiny_embedding_model  # noqa: F401 - fixture

ATOL = 1e-4


def encoder_batch(seq_lens: list[int]) -> ForwardBatch:
    """The ForwardBatch an encoder reads (sequence boundaries); no KV pool."""
    starts = [sum(seq_lens[:i]) for i in range(len(seq_lens))]
    lens = torch.tensor(seq_lens)
    return ForwardBatch(
        forward_mode=ForwardMode.EXTEND,
        batch_size=len(seq_lens),
        input_ids=torch.empty(0, dtype=torch.int64),
        positions=torch.empty(0, dtype=torch.int64),
        out_cache_loc=torch.empty(0, dtype=torch.int64),
        req_pool_indices=torch.zeros(len(seq_lens), dtype=torch.int64),
        seq_lens=lens,
        seq_lens_cpu=seq_lens,
        extend_prefix_lens_cpu=[0] * len(seq_lens),
        extend_seq_lens_cpu=seq_lens,
        logits_indices=torch.empty(0, dtype=torch.int64),
        req_to_token_pool=None,
        token_to_kv_pool=None,
        attn_backend=None,
        extend_start_loc_cpu=starts,
    )


@torch.inference_mode()
def run_packed(model, token_lists: list[list[int]]) -> list[torch.Tensor]:
    """Our hidden states, all sequences in one packed pass -> per-sequence [L, H]."""
    lens = [len(t) for t in token_lists]
    ids = torch.tensor([t for ts in token_lists for t in ts])
    positions = torch.cat([torch.arange(n) for n in lens])
    hidden = model(ids, positions, encoder_batch(lens))
    return list(hidden.split(lens))


@functools.cache
def hf_bert(path: str):
    from transformers import BertModel as HFBertModel

    return HFBertModel.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def hf_hidden(path: str, token_lists: list[list[int]]) -> list[torch.Tensor]:
    """HF's last hidden states, each sequence alone."""
    return [hf_bert(path)(torch.tensor([ids])).last_hidden_state[0] for ids in token_lists]


def token_lists(vocab_size: int, lens: list[int]) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [[2] + torch.randint(5, vocab_size, (n - 2,), generator=gen).tolist() + [3] for n in lens]


@pytest.fixture(scope="module")
def bert_path(tiny_embedding_model) -> str:  # noqa: F811
    return tiny_embedding_model("BertModel")


@pytest.mark.parametrize("packed_weights", [False, True], ids=["plain-linear", "prepacked-fused"])
@pytest.mark.parametrize(
    "lens", [[9], [9, 4, 17], [6, 6, 6]], ids=["single", "ragged-batch", "equal-lengths"]
)
def test_hidden_states_match_hf(bert_path, lens, packed_weights):
    model, config = load_model(bert_path, is_embedding=True)
    assert isinstance(model, BertModel) and model.uses_kv_cache is False
    if packed_weights:
        assert pack_linear_weights(model) > 0
    seqs = token_lists(config.vocab_size, lens)
    for ours, ref in zip(run_packed(model, seqs), hf_hidden(bert_path, seqs), strict=True):
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)


def test_tanh_gelu_variant_matches_hf(tiny_embedding_model):  # noqa: F811
    path = tiny_embedding_model("BertModel", hidden_act="gelu_new")
    model, config = load_model(path, is_embedding=True)
    pack_linear_weights(model)
    seqs = token_lists(config.vocab_size, [7, 12])
    for ours, ref in zip(run_packed(model, seqs), hf_hidden(path, seqs), strict=True):
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=1e-4)


def test_bert_prefixed_checkpoints_load_and_hf_pooler_weights_are_skipped(bert_path):
    model, config = load_model(bert_path, is_embedding=True)
    state = load_file(f"{bert_path}/model.safetensors")
    assert any(name.startswith("pooler.") for name in state)  # HF's tanh head: present, not used
    other = BertModel(config)  # parameters are torch.empty: every one comes from the checkpoint
    other.load_weights(("bert." + name, t) for name, t in state.items())
    seqs = token_lists(config.vocab_size, [8, 5])
    for a, b in zip(run_packed(model, seqs), run_packed(other, seqs), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_unknown_or_missing_weights_are_named(bert_path):
    _, config = load_model(bert_path, is_embedding=True)
    state = load_file(f"{bert_path}/model.safetensors")
    model = BertModel(config)
    with pytest.raises(ValueError, match="Unexpected weight 'encoder.layer.0.extra.weight'"):
        model.load_weights([*state.items(), ("encoder.layer.0.extra.weight", torch.zeros(1))])
    partial = {k: v for k, v in state.items() if ".attention.self.key." not in k}
    with pytest.raises(ValueError, match=r"qkv_proj\.weight\[k\]"):
        model.load_weights(partial.items())


def test_relative_position_embeddings_are_refused(bert_path):
    _, config = load_model(bert_path, is_embedding=True)
    config.hf_config.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match="relative_key"):
        BertModel(config)
