"""Tool calling and reasoning over real HTTP (sglkit/server/openai_tools.py, openai_chat_output.py, parser_api.py).

One server on the tiny Llama with a Qwen3-style template (tools in <tools>, calls as <tool_call>, thinking) and
``--reasoning-parser qwen3``; its tool-call parser is recognised from the template. The random-weight model makes
real calls where a grammar forces them: tool_choice required / named (a JSON-schema grammar), or ``auto`` with a
regex that forces the template's <tool_call> text, which the qwen25 detector then reads. Clients: the official
``openai`` client (its stream helper accumulates streamed calls), LangChain's ``ChatOpenAI`` (``bind_tools``,
``with_structured_output``) and raw HTTP for the 400s and native routes.
"""

from __future__ import annotations

import json
import os
import re
from typing import Literal

import jsonschema
import openai
import pytest
import requests
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field
from transformers import AutoTokenizer

from sglkit.testing.chat_templates import QWEN3_TEMPLATE
from sglkit.utils import terminate_process
from tests.server.conftest import start_server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two digits.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 9},
                "b": {"type": "integer", "minimum": 0, "maximum": 9},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
USER = [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]
CALL_ID = re.compile(r"^call_[0-9a-f]{24}$")
# Forces the template's own tool-call text, so tool_choice "auto" has something to parse.
TOOL_CALL_REGEX = (
    r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome)"\}\}\n</tool_call>'
)
MAX_TOKENS = 120


@pytest.fixture(scope="module")
def server(tiny_model_factory, tmp_path_factory):
    """The tools + reasoning server (stopped at the end of the module)."""
    os.environ.setdefault("SGLKIT_ECHO_LOGS", "0")
    template = tmp_path_factory.mktemp("templates") / "qwen3_tools.jinja"
    template.write_text(QWEN3_TEMPLATE)
    running = start_server(
        tiny_model_factory("LlamaForCausalLM"),
        f"--chat-template {template} --reasoning-parser qwen3 --max-total-tokens 8192",
    )
    yield running
    terminate_process(running.process)


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="None", max_retries=0) as c:
        yield c


@pytest.fixture(scope="module")
def tokenizer(server):
    tok = AutoTokenizer.from_pretrained(server.model_path)
    tok.chat_template = QWEN3_TEMPLATE
    return tok


def create(client, server, **kwargs):
    """A greedy chat completion with the tools."""
    body = {"model": server.model_path, "messages": USER, "tools": TOOLS, "max_tokens": MAX_TOKENS}
    return client.chat.completions.create(**{**body, "temperature": 0, **kwargs})


def calls_of(message) -> list[tuple[str, dict]]:
    """(name, arguments) of a message's tool calls, checking ids, types and arguments against the schemas."""
    out = []
    for call in message.tool_calls or []:
        assert CALL_ID.match(call.id) and call.type == "function"
        args = json.loads(call.function.arguments)
        jsonschema.validate(args, SCHEMAS[call.function.name])
        out.append((call.function.name, args))
    return out


def post(server, path: str, body: dict) -> requests.Response:
    return requests.post(f"{server.base_url}{path}", json=body, timeout=120)


# ----------------------------------------------------------------------------- forced calls (grammar)
def test_required_makes_real_tool_calls(client, server):
    reply = create(client, server, tool_choice="required", parallel_tool_calls=False)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(calls_of(choice.message)) == 1


def test_required_parallel_calls_cut_by_max_tokens(client, server):
    """Parallel calls: every complete call is valid; a call that max_tokens cut off stays text (length)."""
    choice = create(client, server, tool_choice="required", max_tokens=60).choices[0]
    calls = calls_of(choice.message)
    assert calls
    if choice.finish_reason == "length":
        assert choice.message.content.startswith('{"name"')  # the unfinished call, as text
    else:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None


def test_named_tool_choice_calls_that_tool_once(client, server):
    reply = create(client, server, tool_choice={"type": "function", "function": {"name": "add"}})
    assert reply.choices[0].finish_reason == "tool_calls"
    ((name, args),) = calls_of(reply.choices[0].message)
    assert name == "add" and set(args) == {"a", "b"}


def test_parallel_tool_calls_false_makes_one_call(client, server):
    reply = create(
        client, server, tool_choice="required", parallel_tool_calls=False, n=2, temperature=1.0, seed=3
    )
    for choice in reply.choices:
        assert len(calls_of(choice.message)) == 1


def test_legacy_functions_and_function_call(client, server):
    reply = create(
        client,
        server,
        tools=openai.NOT_GIVEN,
        functions=[ADD["function"]],
        function_call={"name": "add"},
    )
    assert [name for name, _ in calls_of(reply.choices[0].message)] == ["add"]


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_streamed_calls_equal_non_streamed(client, server, tool_choice):
    one = {"tool_choice": tool_choice, "parallel_tool_calls": False}  # an array that ends: no cut-off call
    whole = create(client, server, **one).choices[0]
    body = {"model": server.model_path, "messages": USER, "tools": TOOLS, "max_tokens": MAX_TOKENS}
    with client.chat.completions.stream(**body, temperature=0, **one) as stream:
        chunks = [event.chunk for event in stream if event.type == "chunk"]
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert calls_of(final.message) == calls_of(whole.message)
    seen: set[int] = set()
    for chunk in chunks:
        for delta in (c.delta.tool_calls or [] for c in chunk.choices):
            for call in delta:
                if call.index not in seen:  # first delta: id, type, name, empty arguments
                    seen.add(call.index)
                    assert CALL_ID.match(call.id) and call.type == "function"
                    assert call.function.name and call.function.arguments == ""
                else:  # later deltas: argument fragments only
                    assert call.id is None and call.function.name is None and call.function.arguments
    assert seen == set(range(len(whole.message.tool_calls)))


# ----------------------------------------------------------------------------- auto (the model's format)
def test_auto_reads_the_models_tool_call_text(client, server):
    kwargs = {"extra_body": {"regex": TOOL_CALL_REGEX, "chat_template_kwargs": {"enable_thinking": False}}}
    whole = create(client, server, **kwargs).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    ((name, args),) = calls_of(whole.message)
    assert name == "get_weather" and args["city"] in ("Paris", "Rome")
    body = {"model": server.model_path, "messages": USER, "tools": TOOLS, "max_tokens": MAX_TOKENS, **kwargs}
    with client.chat.completions.stream(**body, temperature=0) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and calls_of(final.message) == [(name, args)]
    assert not final.message.content


def test_auto_plain_answer_stays_content(client, server):
    kwargs = {"max_tokens": 12, "extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}
    reply = create(client, server, **kwargs).choices[0]
    plain = create(client, server, tool_choice="none", **kwargs).choices[0]
    assert reply.message.tool_calls is None and reply.finish_reason in ("stop", "length")
    assert isinstance(reply.message.content, str) and plain.message.tool_calls is None


def test_tool_result_round_trip_goes_through_the_template(client, server, tokenizer):
    first = create(client, server, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]
    history = USER + [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    reply = create(client, server, messages=history, max_tokens=8)
    assert reply.choices[0].message.role == "assistant"
    reference = [dict(m) for m in history]  # what the template should see: arguments as an object
    reference[1]["tool_calls"] = [
        {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
        for c in reference[1]["tool_calls"]
    ]
    reference[1]["content"] = ""
    prompt = tokenizer.apply_chat_template(reference, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    assert "<tool_response>\nSunny, 21 C\n</tool_response>" in prompt and '"arguments": {"city": ' in prompt
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert reply.usage.prompt_tokens == len(ids)


# ----------------------------------------------------------------------------- 400s
@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),  # no tools
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "delete_all"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
        ({"tools": [ADD, ADD]}, "tools"),
        ({"tools": TOOLS, "tool_choice": "required", "regex": "a+"}, "tool_choice"),
        ({"tool_choice": "maybe", "tools": TOOLS}, "tool_choice"),
    ],
)
def test_bad_tool_requests_are_400_naming_the_field(server, body, param):
    resp = post(server, "/v1/chat/completions", {"messages": USER, "max_tokens": 4, **body})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert re.split(r"[.\[]", err["param"] or "")[0] == param, err
    ok = post(server, "/v1/chat/completions", {"messages": USER, "max_tokens": 2})
    assert ok.status_code == 200


# ----------------------------------------------------------------------------- reasoning
def test_forced_reasoning_split_and_streamed(client, server):
    regex = r"<think>\nTwo plus three\.\n</think>\n\n(Five|Six)\."
    kwargs = {"tools": openai.NOT_GIVEN, "extra_body": {"regex": regex}}
    whole = create(client, server, **kwargs).choices[0].message
    assert whole.reasoning_content == "Two plus three.\n" and whole.content in ("Five.", "Six.")
    body = {"model": server.model_path, "messages": USER, "max_tokens": MAX_TOKENS, "temperature": 0}
    stream = client.chat.completions.create(**body, stream=True, extra_body={"regex": regex})
    deltas = [c.choices[0].delta for c in stream if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert (reasoning, "".join(d.content or "" for d in deltas)) == (whole.reasoning_content, whole.content)
    raw = create(client, server, **{**kwargs, "extra_body": {"regex": regex, "separate_reasoning": False}})
    assert (
        raw.choices[0].message.content
        == "<think>\n" + whole.reasoning_content + "</think>\n\n" + whole.content
    )


def test_template_opened_think_makes_everything_reasoning(client, server):
    """continue_final_message on "<think>\\n" leaves the prompt inside <think>: the answer is reasoning."""
    messages = USER + [{"role": "assistant", "content": "<think>\n"}]
    body = {"model": server.model_path, "messages": messages, "max_tokens": 10, "temperature": 0}
    extra = {"continue_final_message": True, "add_generation_prompt": False}
    whole = client.chat.completions.create(**body, extra_body=extra).choices[0].message
    assert whole.reasoning_content and whole.content == ""
    stream = client.chat.completions.create(
        **body, stream=True, extra_body={**extra, "stream_reasoning": False}
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]
    pieces = [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)]
    assert pieces == [whole.reasoning_content]  # stream_reasoning false: one piece


def test_enable_thinking_false_reaches_the_template(client, server, tokenizer):
    reply = create(
        client,
        server,
        tools=openai.NOT_GIVEN,
        max_tokens=2,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    ids = tokenizer.apply_chat_template(
        USER, add_generation_prompt=True, enable_thinking=False, tokenize=True
    )
    assert reply.usage.prompt_tokens == len(ids["input_ids"] if hasattr(ids, "keys") else ids)


def test_continue_final_message_continues_the_assistant_text(client, server, tokenizer):
    messages = USER + [{"role": "assistant", "content": "The weather in Paris is"}]
    body = {"model": server.model_path, "messages": messages, "max_tokens": 8, "temperature": 0}
    reply = client.chat.completions.create(**body, extra_body={"continue_final_message": True})
    prompt = tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\nThe weather in Paris is")
    native = post(
        server, "/generate", {"text": prompt, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    )
    assert reply.choices[0].message.content == native.json()["text"]
    both = post(
        server,
        "/v1/chat/completions",
        {**body, "continue_final_message": True, "add_generation_prompt": True},
    )
    assert both.status_code == 400 and both.json()["error"]["param"] == "continue_final_message"


# ----------------------------------------------------------------------------- native parser routes
def test_parse_function_call_route(server):
    text = 'Checking.\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    resp = post(server, "/parse_function_call", {"text": text, "tool_call_parser": "qwen25", "tools": TOOLS})
    assert resp.status_code == 200
    assert resp.json() == {
        "normal_text": "Checking.",
        "calls": [{"tool_index": 0, "name": "add", "parameters": '{"a": 2, "b": 3}'}],
    }
    default = post(
        server, "/parse_function_call", {"text": text, "tools": TOOLS}
    )  # recognised from the template
    assert default.json() == resp.json()
    bad = post(server, "/parse_function_call", {"text": text, "tool_call_parser": "gpt-oss", "tools": TOOLS})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tool_call_parser"


def test_separate_reasoning_route(server):
    resp = post(
        server,
        "/separate_reasoning",
        {"text": "<think>\nAdd.\n</think>\n\nFive.", "reasoning_parser": "qwen3"},
    )
    assert resp.json() == {"text": "Five.", "reasoning_text": "Add.\n"}
    r1 = post(server, "/separate_reasoning", {"text": "Add.</think>Five.", "reasoning_parser": "deepseek-r1"})
    assert r1.json() == {"text": "Five.", "reasoning_text": "Add."}
    bad = post(server, "/separate_reasoning", {"text": "x", "reasoning_parser": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "reasoning_parser"


# ----------------------------------------------------------------------------- LangChain
class Weather(BaseModel):
    """The weather in a city."""

    city: Literal["Paris", "Rome", "Oslo"]
    celsius: int = Field(ge=-20, le=40)


def lc_chat(server) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key="x",
        model=server.model_path,
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
    )


@pytest.mark.parametrize("tool_choice", ["get_weather", "any"])  # LangChain's "any" is OpenAI's "required"
def test_langchain_bind_tools_invoke_and_stream(server, tool_choice):
    llm = lc_chat(server).bind_tools(TOOLS, tool_choice=tool_choice, parallel_tool_calls=False)
    message = llm.invoke("What is the weather in Paris?")
    ((call,),) = [message.tool_calls]
    assert call["name"] in SCHEMAS and CALL_ID.match(call["id"])
    jsonschema.validate(call["args"], SCHEMAS[call["name"]])
    assert message.response_metadata["finish_reason"] == "tool_calls"
    chunks = list(llm.stream("What is the weather in Paris?"))
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [(call["name"], call["args"])]
    assert streamed.tool_calls[0]["id"] and not streamed.invalid_tool_calls


def test_langchain_structured_output_function_calling(server):
    structured = lc_chat(server).with_structured_output(Weather, method="function_calling")
    result = structured.invoke("What is the weather in Paris?")
    assert isinstance(result, Weather)


def test_langchain_structured_output_json_schema(server):
    structured = lc_chat(server).with_structured_output(Weather, method="json_schema")
    result = structured.invoke("What is the weather in Paris?")
    assert isinstance(result, Weather)
