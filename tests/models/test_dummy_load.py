"""load_format="dummy": seeded random weights of a config's shape, no safetensors read (loader and Engine)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import sglkit
from sglkit.models.loader import LOAD_FORMATS, init_dummy_weights, load_model
from sglkit.server_args import ServerArgs


@pytest.fixture(scope="module")
def config_only_path(llama_path, tmp_path_factory):
    """The tiny Llama's folder without its weights: config.json and the tokenizer files only."""
    out = tmp_path_factory.mktemp("config-only")
    for file in Path(llama_path).iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, out / file.name)
    assert not list(out.glob("*.safetensors"))
    return str(out)


def test_dummy_weights_are_seeded_and_shaped(config_only_path):
    a, config = load_model(config_only_path, load_format="dummy", seed=3)
    b, _ = load_model(config_only_path, load_format="dummy", seed=3)
    c, _ = load_model(config_only_path, load_format="dummy", seed=4)
    pa, pb, pc = dict(a.named_parameters()), dict(b.named_parameters()), dict(c.named_parameters())
    assert all(torch.equal(pa[n], pb[n]) for n in pa)
    assert any(not torch.equal(pa[n], pc[n]) for n in pa)
    embed = pa["model.embed_tokens.weight"]
    assert embed.shape == (config.vocab_size, config.hidden_size)
    assert 0.015 < embed.std().item() < 0.025 and abs(embed.mean().item()) < 0.005
    assert torch.equal(pa["model.norm.weight"], torch.ones(config.hidden_size))


def test_dummy_gemma_norms_are_the_identity(tiny_model_factory):
    model, _ = load_model(tiny_model_factory("Gemma2ForCausalLM"), load_format="dummy")
    norms = {n: p for n, p in model.named_parameters() if n.endswith("norm.weight")}
    assert norms and all(torch.equal(p, torch.zeros_like(p)) for p in norms.values())  # (1 + w) = 1


def test_init_dummy_weights_zeroes_biases():
    layer = torch.nn.Linear(4, 3)
    init_dummy_weights(layer, seed=0)
    assert torch.equal(layer.bias, torch.zeros(3)) and layer.weight.abs().max() < 0.2


def test_load_format_validation(config_only_path):
    assert LOAD_FORMATS == ("auto", "safetensors", "dummy")
    with pytest.raises(ValueError, match="load_format must be one of"):
        ServerArgs(model_path=config_only_path, load_format="pt")
    with pytest.raises(ValueError, match="load_format must be one of"):
        load_model(config_only_path, load_format="npz")
    with pytest.raises(FileNotFoundError, match="No \\*.safetensors"):
        load_model(config_only_path)  # the default still reads the checkpoint


def test_engine_generates_with_dummy_weights_deterministically(config_only_path):
    params = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}
    outputs = []
    for seed in (0, 0, 1):
        args = dict(model_path=config_only_path, load_format="dummy", random_seed=seed, max_total_tokens=512)
        with sglkit.Engine(**args) as engine:
            out = engine.generate("The capital of France is", params)
            logits = engine.generate("Hello", {**params, "max_new_tokens": 1}, return_logprob=True)
        assert len(out["output_ids"]) == 6
        outputs.append((out["output_ids"], logits["meta_info"]["output_token_logprobs"]))
    assert outputs[0] == outputs[1]
    assert outputs[0][1] != outputs[2][1]  # another seed, other weights
