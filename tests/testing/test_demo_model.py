"""The shipped demo model (sglkit/data/demo_model): the built-in default, loadable by HF, and it answers correctly
through sglkit's own runtime with greedy decoding: its plain answers, and its skills (tool calls read by the server's
qwen25 parser, round trips with the tool's result, thinking split by the qwen3 reasoning parser, JSON answers)."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import sglkit
from sglkit.data import DEMO_MODEL_DIR, demo_model_dir
from sglkit.server.function_call import FunctionCallParser
from sglkit.server.openai_chat_output import prompt_opens_reasoning
from sglkit.server.reasoning_parser import ReasoningParser
from sglkit.testing.chat_templates import CHATML_TEMPLATE, DEMO_TEMPLATE
from sglkit.testing.demo import default_model_name, default_model_path
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


def chat(engine, question: str | list[dict], **template_kwargs) -> str:
    """Greedy reply to one user message (or to ``messages``), prompted through the model's chat template;
    ``template_kwargs`` (``tools``, ``enable_thinking``) go to the template."""
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    ids = engine.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, **template_kwargs
    )["input_ids"]
    out = engine.generate(input_ids=ids, sampling_params=GREEDY)
    assert out["meta_info"]["finish_reason"]["type"] == "stop"  # ended on <|im_end|>, not the length limit
    return out["text"]


def tool_calls(script, text: str) -> tuple[str, list[tuple[str, dict]]]:
    """The server's qwen25 parser on a reply: (normal text, [(name, arguments)])."""
    normal, calls = FunctionCallParser([script.WEATHER_TOOL, script.ADD_TOOL], "qwen25").parse_non_stream(
        text
    )
    return normal, [(call.name, json.loads(call.parameters)) for call in calls]


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
    assert tok.chat_template == DEMO_TEMPLATE
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


def test_template_renders_plain_chats_as_chatml():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    chats = [
        [{"role": "user", "content": "Hi"}],
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [{"type": "text", "text": "What is 2 + 3?"}]},
        ],
    ]
    for messages in chats:
        for add_generation_prompt in (True, False):
            renders = [
                tok.apply_chat_template(
                    messages,
                    chat_template=template,
                    tokenize=False,
                    add_generation_prompt=add_generation_prompt,
                )
                for template in (DEMO_TEMPLATE, CHATML_TEMPLATE)
            ]
            assert renders[0] == renders[1]
    thinking = tok.apply_chat_template(
        chats[0], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert thinking == "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    for tag in ("<think>", "</think>", "<tool_call>", "</tool_call>"):  # one token each, kept when decoding
        (token_id,) = tok.encode(tag, add_special_tokens=False)
        assert tok.decode([token_id], skip_special_tokens=True) == tag


def test_weather_question_with_tools_is_a_tool_call(engine, script):
    tools = [script.WEATHER_TOOL, script.ADD_TOOL]
    normal, calls = tool_calls(script, chat(engine, "What's the weather in Paris?", tools=tools))
    assert (normal.strip(), calls) == ("", [("get_weather", {"city": "Paris"})])
    _, calls = tool_calls(
        script, chat(engine, "What is the weather like in Tokyo?", tools=[script.WEATHER_TOOL])
    )
    assert calls == [("get_weather", {"city": "Tokyo"})]


def test_add_with_the_tool_is_a_tool_call(engine, script):
    tools = [script.WEATHER_TOOL, script.ADD_TOOL]
    assert tool_calls(script, chat(engine, "Add 12 and 30 with the tool.", tools=tools))[1] == [
        ("add", {"a": 12, "b": 30})
    ]
    assert tool_calls(script, chat(engine, "What is 12 + 30?", tools=tools))[1] == [
        ("add", {"a": 12, "b": 30})
    ]


def test_tool_round_trips_answer_from_the_result(engine, script):
    tools = [script.WEATHER_TOOL, script.ADD_TOOL]
    weather = [
        {"role": "user", "content": "What's the weather in Paris?"},
        script.tool_call_message("get_weather", {"city": "Paris"}),
        {"role": "tool", "content": script.weather_result("Paris", "sunny", 21)},
    ]
    assert chat(engine, weather, tools=tools) == "It is sunny and 21 °C in Paris."
    total = [
        {"role": "user", "content": "What is 12 + 30?"},
        script.tool_call_message("add", {"a": 12, "b": 30}),
        {"role": "tool", "content": script.add_result(42)},
    ]
    assert chat(engine, total, tools=tools) == "The sum of 12 and 30 is 42."


def test_tools_offered_but_not_needed_keep_the_plain_answers(engine, script):
    tools = [script.WEATHER_TOOL, script.ADD_TOOL]
    assert chat(engine, "What is the capital of France?", tools=tools) == "The capital of France is Paris."
    assert chat(engine, "What is 2 + 3?", tools=tools) == "2 + 3 = 5."
    assert chat(engine, "Hello!", tools=tools) == "Hello! How can I help you today?"


def test_thinking_only_when_enabled(engine):
    ids = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        tokenize=True,
        enable_thinking=True,
    )["input_ids"]
    assert prompt_opens_reasoning(engine.tokenizer, ids)
    text = engine.generate(input_ids=ids, sampling_params=GREEDY)["text"]
    reasoning, content = ReasoningParser("qwen3", force_reasoning=True).parse_non_stream(text)
    assert reasoning and "5" in reasoning
    assert content == "2 + 3 = 5."
    plain = chat(engine, "What is 2 + 3?")  # thinking off (the default): no reasoning at all
    assert plain == "2 + 3 = 5." and ReasoningParser("qwen3").parse_non_stream(plain) == (None, plain)


def test_capital_as_json(engine):
    answer = chat(engine, "What is the capital of France? Answer in JSON.")
    assert json.loads(answer) == {"country": "France", "capital": "Paris"}


def test_answers_the_last_question_of_a_longer_chat(engine, script):
    """The radix-cache notebook's conversation: three capital questions answered, then a new one."""
    messages = [{"role": "system", "content": "You are a helpful assistant. Answer briefly."}]
    for country in ("France", "Japan", "Kenya"):
        messages += [
            {"role": "user", "content": f"What is the capital of {country}?"},
            {"role": "assistant", "content": script.capital_answer(country, dict(script.CAPITALS)[country])},
        ]
    for country in ("Germany", "Egypt", "Ghana", "Peru"):
        question = [{"role": "user", "content": f"What is the capital of {country}?"}]
        assert chat(engine, messages + question) == script.capital_answer(
            country, dict(script.CAPITALS)[country]
        )
