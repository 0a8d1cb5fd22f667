"""Tiny HF-format test models: deterministic, offline, loadable by transformers for every architecture."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from sglkit.testing import PRESETS, SUPPORTED_ARCHITECTURES, make_tiny_model, make_tokenizer


def _file_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_arguments_give_byte_identical_files(tmp_path):
    first = make_tiny_model(tmp_path / "a", seed=3, num_shards=2)
    second = make_tiny_model(tmp_path / "b", seed=3, num_shards=2)
    assert _file_bytes(first) == _file_bytes(second)
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
    } <= set(_file_bytes(first))
    other_seed = make_tiny_model(tmp_path / "c", seed=4, num_shards=2)
    assert (
        _file_bytes(other_seed)["model-00001-of-00002.safetensors"]
        != _file_bytes(first)["model-00001-of-00002.safetensors"]
    )


def test_regenerating_into_same_folder_replaces_old_shards(tmp_path):
    make_tiny_model(tmp_path, num_shards=3)
    make_tiny_model(tmp_path, num_shards=1)
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_sharded_index_covers_every_tensor(tmp_path):
    from safetensors import safe_open

    path = make_tiny_model(tmp_path, num_shards=3)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    stored = {}
    for name in files:
        with safe_open(str(path / name), "pt") as f:
            stored.update({k: name for k in f.keys()})
    assert stored == index["weight_map"]


def test_tokenizer_loads_with_chatml_template(tmp_path):
    make_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert type(tok).__name__ == "TokenizersBackend"
    assert len(tok) == 512
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<s>",
        "<|im_end|>",
        "<pad>",
        "<unk>",
    )
    assert (tmp_path / "chat_template.jinja").exists()

    plain = tok("Hello, Alice!").input_ids
    assert plain[0] == tok.bos_token_id and plain.count(tok.bos_token_id) == 1

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id  # BOS not doubled
    assert tok.decode(ids) == text
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}
    ]
    assert tok.apply_chat_template(parts, tokenize=False) == "<s><|im_start|>user\nHi there<|im_end|>\n"


def test_non_ascii_round_trips_and_spans_several_tokens(tmp_path):
    tok = make_tokenizer(tmp_path)
    text = "Brasília, naïve Zürich 日本 🙂"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text
    assert len(tok("🙂", add_special_tokens=False).input_ids) > 1


@pytest.mark.parametrize("architecture", SUPPORTED_ARCHITECTURES)
def test_transformers_loads_every_architecture(tmp_path, architecture):
    path = make_tiny_model(tmp_path, architecture, tie_word_embeddings=architecture == "Qwen3ForCausalLM")
    config = AutoConfig.from_pretrained(path)
    assert config.architectures == [architecture]
    tok = AutoTokenizer.from_pretrained(path)
    assert config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert config.bos_token_id == tok.convert_tokens_to_ids("<s>")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert type(model).__name__ == architecture
    out = model.generate(
        **tok("The capital of France is", return_tensors="pt"),
        max_new_tokens=16,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tok.pad_token_id,
    )
    new_ids = out[0, -16:].tolist()
    assert len(set(new_ids)) > 4  # varied, not one token repeated forever
    assert torch.isfinite(model(out).logits).all()


def test_small_preset_is_about_20m_parameters(tmp_path):
    path = make_tiny_model(tmp_path, preset="small")
    config = AutoConfig.from_pretrained(path)
    assert config.hidden_size == PRESETS["small"]["hidden_size"] == 512
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert 18e6 < sum(p.numel() for p in model.parameters()) < 23e6


def test_cli_prints_folder(tmp_path):
    out = tmp_path / "cli"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sglkit.testing",
            "--out",
            str(out),
            "--arch",
            "Qwen2ForCausalLM",
            "--num-shards",
            "2",
            "--tie-word-embeddings",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.stdout.strip() == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["tie_word_embeddings"] is True
    assert (out / "model.safetensors.index.json").exists()


def test_stored_dtype_is_recorded_in_config(tmp_path):
    from safetensors import safe_open

    path = make_tiny_model(tmp_path, dtype="bfloat16")
    assert AutoConfig.from_pretrained(path).dtype == torch.bfloat16
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
