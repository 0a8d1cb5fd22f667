"""Loader: local folders only, safetensors only, clear errors, SGLang's progress line, dtype resolution."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sglkit.models import find_safetensors_files, iterate_weights, load_config, load_model, resolve_dtype


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    from sglkit.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("llama"))


def _copy(src, dst, skip=()):
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_no_config(tmp_path, llama_path):
    folder = _copy(llama_path, tmp_path / "m", skip=("config.json",))
    with pytest.raises(FileNotFoundError, match="No config.json"):
        load_model(folder)


def test_only_bin_weights(tmp_path, llama_path):
    folder = _copy(llama_path, tmp_path / "m", skip=("model.safetensors",))
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(
        FileNotFoundError, match=r"only \['pytorch_model.bin'\]. sglkit loads safetensors only"
    ):
        find_safetensors_files(folder)
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_model(folder)


def test_unknown_architecture(tmp_path, llama_path):
    folder = _copy(llama_path, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"\['GPT2LMHeadModel'\] are not supported.*Qwen3ForCausalLM"):
        load_model(folder)
    config["architectures"] = ["LlamaForSequenceClassification"]  # a reward model: served with --is-embedding
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ValueError,
        match=r"\['LlamaForSequenceClassification'\] are embedding / reward models.*--is-embedding",
    ):
        load_model(folder)


def test_sharded_index_must_stay_inside_folder(tmp_path):
    from sglkit.testing import make_tiny_model

    folder = make_tiny_model(tmp_path / "m", num_shards=2)
    files = find_safetensors_files(folder)
    assert [f.name for f in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "../outside.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="outside the model folder"):
        find_safetensors_files(folder)


def test_progress_line_looks_like_sglang(llama_path, capsys):
    names = [name for name, _ in iterate_weights(llama_path)]
    assert "model.embed_tokens.weight" in names and "model.layers.1.self_attn.q_proj.weight" in names
    err = capsys.readouterr().err
    assert "Loading safetensors checkpoint shards:   0% Completed | 0/1 [00:00<?, ?it/s]" in err
    assert "Loading safetensors checkpoint shards: 100% Completed | 1/1 [00:00<00:00, " in err
    list(iterate_weights(llama_path, show_progress=False))
    assert capsys.readouterr().err == ""


def test_resolve_dtype(llama_path):
    config = load_config(llama_path)
    assert resolve_dtype("auto", config, "cpu") == torch.float32
    config.dtype = torch.bfloat16
    assert resolve_dtype("auto", config, "cuda") == torch.bfloat16
    assert resolve_dtype("auto", config, "cuda:1") == torch.bfloat16
    assert resolve_dtype("half", config, "cpu") == torch.float16
    assert resolve_dtype("float", config, "cuda") == torch.float32
    assert resolve_dtype("bfloat16", config, "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype 'fp8'"):
        resolve_dtype("fp8", config, "cpu")


def test_load_model_is_eval_without_grad(llama_path):
    model, config = load_model(llama_path, dtype="float16")
    assert config.architectures == ("LlamaForCausalLM",) and config.hf_config.architectures == [
        "LlamaForCausalLM"
    ]
    assert not model.training
    assert all(not p.requires_grad and p.dtype == torch.float16 for p in model.parameters())
    assert model.model.rotary_emb.cos_sin_cache.dtype == torch.float32
    assert torch.isfinite(model.model.rotary_emb.cos_sin_cache).all()
