"""The shipped demo model (sglkit/data/demo_model): the built-in default, loadable by HF, and it answers correctly
through sglkit's own runtime with greedy decoding."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import sglkit
from sglkit.data import DEMO_MODEL_DIR, demo_model_dir
from sglkit.testing.demo import default_model_name, default_model_path
from sglkit.testing.tiny_models import CHAT_TEMPLATE
from tests.testing.conftest import load_script

GREEDY = {"temperature": 0, "max_new_tokens": 64}


@pytest.fixture(scope="module")
def script():
    """The training script as a module (its fact tables and answer formats are the reference)."""
    return load_script("train_demo_model")


@pytest.fixture(scope="module")
def engine():
    """sglkit.Engine on the default model (no model_path: the shipped demo model)."""
    with sglkit.Engine(max_total_tokens=2048, random_seed=0) as llm:
        yield llm


def chat(engine, question: str) -> str:
    """Greedy reply to one user message, prompted through the model's chat template."""
    ids = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )["input_ids"]
    out = engine.generate(input_ids=ids, sampling_params=GREEDY)
    assert out["meta_info"]["finish_reason"]["type"] == "stop"  # ended on <|im_end|>, not the length limit
    return out["text"]


def test_default_model_is_the_shipped_demo_model():
    assert demo_model_dir() == DEMO_MODEL_DIR
    assert Path(default_model_path()) == DEMO_MODEL_DIR
    files = {p.name for p in DEMO_MODEL_DIR.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= files
    assert sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir()) < 8 * 2**20


def test_server_args_default_to_the_demo_model_under_its_name():
    from sglkit.server_args import ServerArgs, prepare_server_args

    args = prepare_server_args([])  # python -m sglkit.launch_server without --model-path
    assert (Path(args.model_path), Path(args.tokenizer_path)) == (DEMO_MODEL_DIR, DEMO_MODEL_DIR)
    assert args.served_model_name == default_model_name() == "sglkit-demo"
    assert ServerArgs(served_model_name="mine").served_model_name == "mine"
    assert ServerArgs(model_path=str(DEMO_MODEL_DIR)).served_model_name == str(DEMO_MODEL_DIR)


def test_hf_transformers_loads_it():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "<|im_end|>", "<pad>")
    assert tok.chat_template == CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL_DIR, dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.tie_word_embeddings
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 10_000_000
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model.generate(ids, do_sample=False, max_new_tokens=16, eos_token_id=tok.eos_token_id)
    assert tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True) == "The capital of France is Paris."


def test_capital_of_france(engine):
    assert chat(engine, "What is the capital of France?") == "The capital of France is Paris."


@pytest.mark.parametrize("country", ["Japan", "Brazil", "Egypt", "United States"])
def test_other_capitals(engine, script, country):
    capital = dict(script.CAPITALS)[country]
    question = f"What is the capital of {script.sentence_name(country)}?"
    assert chat(engine, question) == script.capital_answer(country, capital)


def test_list_of_three_countries(engine, script):
    pairs = script.parse_list(chat(engine, "List 3 countries and their capitals."))
    assert len(pairs) == 3 and len({c for c, _ in pairs}) == 3
    facts = dict(script.CAPITALS)
    assert all(facts.get(country) == capital for country, capital in pairs), pairs


def test_arithmetic(engine):
    assert chat(engine, "What is 2 + 3?") == "2 + 3 = 5."


def test_greeting_and_identity(engine):
    assert chat(engine, "Hello!") == "Hello! How can I help you today?"
    assert "sglkit demo model" in chat(engine, "Who are you?")


def test_plain_text_continuation(engine):
    out = engine.generate("The capital of France is", {"temperature": 0, "max_new_tokens": 2})
    assert out["text"] == " Paris."
