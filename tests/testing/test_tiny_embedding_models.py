"""Tiny embedding / reward checkpoints (sglkit/testing/tiny_embedding_models.py): deterministic, loadable by HF
transformers and sentence-transformers, in the layouts the real checkpoints use."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from sglkit.testing import EMBEDDING_ARCHITECTURES, make_tiny_embedding_model


def test_same_arguments_give_identical_files(tmp_path):
    a = make_tiny_embedding_model(tmp_path / "a", "BertModel", pooling="cls")
    b = make_tiny_embedding_model(tmp_path / "b", "BertModel", pooling="cls")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert {"modules.json", "1_Pooling/config.json", "model.safetensors", "tokenizer.json"} <= {
        str(f) for f in files
    }
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_bert_has_the_sentence_transformers_layout_and_a_wordpiece_tokenizer(tmp_path):
    path = make_tiny_embedding_model(tmp_path / "bert", "BertModel", pooling="mean", normalize=False)
    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["pooling_mode_cls_token"] is False
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    ids = tokenizer("Hello World")["input_ids"]
    assert (
        ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id and tokenizer.pad_token_id == 0
    )
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello world"  # uncased
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(path), device="cpu")
    assert model.encode(["hello"]).shape == (1, AutoConfig.from_pretrained(str(path)).hidden_size)


@pytest.mark.parametrize("arch", [a for a in EMBEDDING_ARCHITECTURES if a != "BertModel"])
def test_decoder_checkpoints_use_hf_names(tmp_path, arch):
    path = make_tiny_embedding_model(tmp_path / arch, arch)
    config = AutoConfig.from_pretrained(str(path))
    names = set(load_file(str(path / "model.safetensors")))
    assert config.architectures == [arch]
    if arch.endswith("Model"):
        assert "embed_tokens.weight" in names and not any(n.startswith(("model.", "lm_head")) for n in names)
    elif arch.endswith("ForSequenceClassification"):
        assert config.num_labels == 1 and config.pad_token_id is not None
        assert "score.weight" in names and "lm_head.weight" not in names
    else:
        assert "lm_head.weight" in names


def test_unknown_architecture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unsupported architecture"):
        make_tiny_embedding_model(tmp_path / "x", "GPT2Model")
