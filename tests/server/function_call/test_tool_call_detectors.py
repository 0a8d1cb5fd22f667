"""Tool-call detectors (sglkit/server/function_call): each format whole and streamed at every split point.

The streamed pieces of an output, accumulated the way an OpenAI client does (name from the first piece,
arguments concatenated), must equal the non-streamed parse, wherever the text is cut into chunks.
"""

from __future__ import annotations

import json

import pytest

from sglkit.server.function_call import FunctionCallParser, ToolCallItem
from sglkit.server.function_call.function_call_parser import DETECTORS

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "add"}},
]
WEATHER = ("get_weather", '{"city": "Paris", "unit": "celsius"}')
ADD = ("add", '{"a": 1, "b": 2.5}')

# (parser, model output, expected normal text, expected calls)
SAMPLES = [
    (
        "qwen25",
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2.50}}\n</tool_call>',
        "Let me check.",
        [WEATHER, ADD],
    ),
    (
        "hermes",
        '<tool_call>\n{"arguments": {"city": "Paris", "unit": "celsius"}, "name": "get_weather"}\n</tool_call>',
        "",
        [WEATHER],
    ),
    (
        "llama3",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city":"Paris","unit":"celsius"}}; '
        '{"name": "add", "parameters": {"a": 1, "b": 2.5}}',
        "",
        [WEATHER, ADD],
    ),
    ("llama3", '{"name": "add", "parameters": {"a": 1, "b": 2.5}}', "", [ADD]),
    (
        "mistral",
        'Sure [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
        '{"name": "add", "arguments": {"a": 1, "b": 2.5}}]',
        "Sure",
        [WEATHER, ADD],
    ),
    (
        "pythonic",
        "I will call [get_weather(city=\"Paris\", unit='celsius'), add(a=1, b=2.5)] now",
        "I will call now",
        [WEATHER, ADD],
    ),
    (
        "json_array",
        '[{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}]',
        "",
        [WEATHER],
    ),
    # Unicode and escapes survive canonicalisation; a string holding JSON arguments is accepted.
    (
        "qwen25",
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"S\\u00e3o \\\\\\"P\\\\\\"\\"}"}</tool_call>',
        "",
        [("get_weather", '{"city": "São \\"P\\""}')],
    ),
    ("qwen25", "No tools needed: the answer is 4.", "No tools needed: the answer is 4.", []),
]


def accumulate(parser: FunctionCallParser, chunks: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """Feed ``chunks``; the normal text and the calls as a client accumulates them."""
    normal, calls = "", {}
    pieces: list[ToolCallItem] = []
    for chunk in chunks:
        text, items = parser.parse_stream_chunk(chunk)
        normal += text
        pieces += items
    text, items = parser.finish()
    normal += text
    pieces += items
    for item in pieces:
        if item.name is not None:
            assert item.tool_index not in calls, "a call's name is sent once"
            assert item.parameters == "", "the first piece of a call has empty arguments"
            calls[item.tool_index] = [item.name, ""]
        else:
            calls[item.tool_index][1] += item.parameters
    assert sorted(calls) == list(range(len(calls)))
    return normal, [tuple(calls[i]) for i in sorted(calls)]


@pytest.mark.parametrize(("parser_name", "text", "normal", "calls"), SAMPLES)
def test_non_stream(parser_name, text, normal, calls):
    got_normal, items = FunctionCallParser(TOOLS, parser_name).parse_non_stream(text)
    assert got_normal == normal
    assert [(c.name, c.parameters) for c in items] == calls
    assert [c.tool_index for c in items] == list(range(len(calls)))
    for _, args in calls:
        assert isinstance(json.loads(args), dict)


@pytest.mark.parametrize(("parser_name", "text", "normal", "calls"), SAMPLES)
def test_stream_every_split_point(parser_name, text, normal, calls):
    for cut in range(len(text) + 1):
        got = accumulate(FunctionCallParser(TOOLS, parser_name), [text[:cut], text[cut:]])
        assert got == (normal, calls), cut
    for step in (1, 2, 7):
        chunks = [text[i : i + step] for i in range(0, len(text), step)]
        assert accumulate(FunctionCallParser(TOOLS, parser_name), chunks) == (normal, calls), step


@pytest.mark.parametrize(("parser_name", "text", "normal", "calls"), SAMPLES)
def test_stream_never_shows_a_partial_start_token(parser_name, text, normal, calls):
    parser = FunctionCallParser(TOOLS, parser_name)
    shown = ""
    for ch in text:
        shown += parser.parse_stream_chunk(ch)[0]
        assert normal.startswith(shown) or shown.startswith(normal), shown


@pytest.mark.parametrize(
    ("parser_name", "text"),
    [
        ("qwen25", '<tool_call>\n{"name": "delete_all", "arguments": {}}\n</tool_call>'),
        ("llama3", '<|python_tag|>{"name": "delete_all", "parameters": {}}'),
        ("mistral", '[TOOL_CALLS] [{"name": "delete_all", "arguments": {}}]'),
        ("pythonic", "[delete_all(force=True)]"),
    ],
)
def test_calls_to_unknown_tools_stay_text(parser_name, text):
    assert FunctionCallParser(TOOLS, parser_name).parse_non_stream(text) == (text, [])
    assert accumulate(FunctionCallParser(TOOLS, parser_name), list(text)) == (text, [])


@pytest.mark.parametrize(
    ("parser_name", "text"),
    [
        ("qwen25", "<tool_call> not json </tool_call>"),
        ("qwen25", '<tool_call>{"arguments": {}}</tool_call>'),  # no name
        ("llama3", '{"answer": 42} is JSON, not a call'),
        ("mistral", "[TOOL_CALLS] oops"),
        ("pythonic", "[get_weather('Paris')]"),  # positional argument
        ("pythonic", "[get_weather(city=open('x'))]"),  # not a literal: never evaluated
        ("pythonic", "a list [1, 2] and [x for x in y]"),
    ],
)
def test_invalid_regions_are_text(parser_name, text):
    assert FunctionCallParser(TOOLS, parser_name).parse_non_stream(text) == (text, [])
    assert accumulate(FunctionCallParser(TOOLS, parser_name), list(text)) == (text, [])


def test_call_that_fails_after_its_name_was_streamed():
    """Whole: the region is text. Streamed: the name was already sent (a partial call); the text follows."""
    text = '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>'  # arguments not an object
    assert FunctionCallParser(TOOLS, "qwen25").parse_non_stream(text) == (text, [])
    assert accumulate(FunctionCallParser(TOOLS, "qwen25"), list(text)) == (text, [("add", "")])


def test_truncated_call_is_text_when_whole_and_partial_when_streamed():
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b"'
    assert FunctionCallParser(TOOLS, "qwen25").parse_non_stream(text) == (text, [])
    assert accumulate(FunctionCallParser(TOOLS, "qwen25"), [text]) == ("", [("add", '{"a": 1, "b"')])


def test_close_token_may_be_missing_at_the_end():
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2.5}}'
    assert FunctionCallParser(TOOLS, "qwen25").parse_non_stream(text)[1][0].parameters == ADD[1]


def test_text_after_llama3_calls_is_normal_text():
    text = '{"name": "add", "parameters": {"a": 1, "b": 2.5}} and done'
    normal, calls = FunctionCallParser(TOOLS, "llama3").parse_non_stream(text)
    assert (normal, [(c.name, c.parameters) for c in calls]) == ("and done", [ADD])


def test_has_tool_call():
    assert FunctionCallParser(TOOLS, "qwen25").has_tool_call("x <tool_call>{")
    assert not FunctionCallParser(TOOLS, "qwen25").has_tool_call("x <tool_ca")
    assert FunctionCallParser(TOOLS, "mistral").has_tool_call("[TOOL_CALLS] [")
    assert FunctionCallParser(TOOLS, "pythonic").has_tool_call("[add(")


def test_every_parser_name_resolves_and_unknown_names_fail():
    for name in DETECTORS:
        assert FunctionCallParser(TOOLS, name).tool_call_parser == name
    with pytest.raises(ValueError, match="Unknown tool call parser"):
        FunctionCallParser(TOOLS, "gpt-oss")
