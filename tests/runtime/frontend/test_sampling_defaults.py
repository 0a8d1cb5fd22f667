"""Sampling defaults from the model's generation_config.json (``--sampling-defaults model|openai``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import sglkit
from sglkit.runtime.frontend.input_processor import GenerateInput, build_requests
from sglkit.runtime.frontend.sampling_defaults import apply_sampling_defaults, model_sampling_defaults


def write_generation_config(folder: Path, **values) -> None:
    path = folder / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**config, **values}))


@pytest.fixture(scope="module")
def greedy_by_default_model(llama_path, tmp_path_factory) -> str:
    """The tiny Llama whose generation_config.json asks for temperature 0 and top_k 0 (HF's "off")."""
    folder = tmp_path_factory.mktemp("gen-config") / "model"
    shutil.copytree(llama_path, folder)
    write_generation_config(folder, temperature=0.0, top_k=0, top_p=0.9, do_sample=True, max_length=20)
    return str(folder)


def test_only_explicit_sampling_keys_are_taken(greedy_by_default_model):
    defaults = model_sampling_defaults(greedy_by_default_model)
    assert defaults == {"temperature": 0.0, "top_p": 0.9, "top_k": -1}
    assert model_sampling_defaults(greedy_by_default_model, "openai") == {}
    with pytest.raises(ValueError, match="sampling_defaults"):
        model_sampling_defaults(greedy_by_default_model, "hf")


def test_a_model_without_sampling_keys_has_no_defaults(llama_path):
    assert model_sampling_defaults(llama_path) == {}


def test_request_values_win_and_null_means_unset():
    defaults = {"temperature": 0.3, "top_p": 0.8}
    assert apply_sampling_defaults({"temperature": 1.0, "top_p": None}, defaults) == {
        "temperature": 1.0,
        "top_p": 0.8,
    }
    assert apply_sampling_defaults({}, {}) == {}


def test_build_requests_fills_unset_keys(greedy_by_default_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(greedy_by_default_model)
    defaults = model_sampling_defaults(greedy_by_default_model)
    inp = GenerateInput(text=["a", "b"], sampling_params=[{}, {"temperature": 0.7}])
    _, reqs, _ = build_requests(inp, tok, 512, 2048, sampling_defaults=defaults)
    assert (reqs[0].sampling_params.temperature, reqs[0].sampling_params.top_p) == (0.0, 0.9)
    assert (reqs[1].sampling_params.temperature, reqs[1].sampling_params.top_p) == (0.7, 0.9)


def test_engine_uses_the_model_defaults_unless_openai(greedy_by_default_model):
    prompt = "The capital of France is"
    with sglkit.Engine(model_path=greedy_by_default_model, random_seed=0) as llm:
        greedy = llm.generate(prompt, {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True})
        unset = [llm.generate(prompt, {"max_new_tokens": 12, "ignore_eos": True}) for _ in range(2)]
        assert [o["output_ids"] for o in unset] == [greedy["output_ids"]] * 2
    with sglkit.Engine(model_path=greedy_by_default_model, sampling_defaults="openai", random_seed=0) as llm:
        sampled = [
            llm.generate(prompt, {"max_new_tokens": 12, "ignore_eos": True})["output_ids"] for _ in range(4)
        ]
        assert any(ids != greedy["output_ids"] for ids in sampled)
