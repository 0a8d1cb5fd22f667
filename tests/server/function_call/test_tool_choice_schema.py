"""The forcing schema and parser auto-detection (sglkit/server/function_call/tool_choice.py, function_call_parser).

Schemas are checked with jsonschema (what they accept and refuse) and compiled by xgrammar, the backend that
enforces them; the JSON they accept parses into calls through the ``json_array`` detector.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from sglkit.server.function_call import FunctionCallParser, detect_tool_call_parser, tool_call_json_schema
from sglkit.testing.chat_templates import CHATML_TEMPLATE, MISTRAL_TEMPLATE, QWEN3_TEMPLATE

WEATHER = {
    "name": "get_weather",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ADD = {"name": "add"}  # no parameters: an empty object
FUNCTIONS = [WEATHER, ADD]


def valid(schema: dict, instance) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(instance)


def test_required_accepts_calls_of_any_tool():
    schema = tool_call_json_schema(FUNCTIONS, "required")
    assert valid(schema, [{"name": "get_weather", "parameters": {"city": "Rome"}}])
    assert valid(
        schema, [{"name": "add", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Paris"}}]
    )
    assert not valid(schema, [])
    assert not valid(schema, [{"name": "delete_all", "parameters": {}}])
    assert not valid(schema, [{"name": "get_weather", "parameters": {"city": "Oslo"}}])
    assert not valid(schema, [{"name": "get_weather", "parameters": {"city": "Rome"}, "extra": 1}])


def test_parallel_tool_calls_false_allows_one_call():
    schema = tool_call_json_schema(FUNCTIONS, "required", parallel_tool_calls=False)
    assert valid(schema, [{"name": "add", "parameters": {}}])
    assert not valid(schema, [{"name": "add", "parameters": {}}] * 2)


def test_named_function_allows_only_that_function_once():
    schema = tool_call_json_schema(FUNCTIONS, "get_weather")
    assert valid(schema, [{"name": "get_weather", "parameters": {"city": "Paris"}}])
    assert not valid(schema, [{"name": "add", "parameters": {}}])
    assert not valid(schema, [{"name": "get_weather", "parameters": {"city": "Paris"}}] * 2)
    with pytest.raises(ValueError, match="No tool named"):
        tool_call_json_schema(FUNCTIONS, "nope")


@pytest.mark.parametrize("choice", ["required", "get_weather", "add"])
def test_schemas_compile_with_xgrammar(choice):
    xgr = pytest.importorskip("xgrammar")
    xgr.Grammar.from_json_schema(json.dumps(tool_call_json_schema(FUNCTIONS, choice)))


def test_forced_output_parses_into_calls():
    text = '[{"name": "get_weather", "parameters": {"city": "Rome"}}, {"name": "add", "parameters": {}}]'
    tools = [{"type": "function", "function": f} for f in FUNCTIONS]
    normal, calls = FunctionCallParser(tools, "json_array").parse_non_stream(text)
    assert normal == ""
    assert [(c.name, json.loads(c.parameters)) for c in calls] == [
        ("get_weather", {"city": "Rome"}),
        ("add", {}),
    ]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (QWEN3_TEMPLATE, "qwen25"),
        ("{{ '[TOOL_CALLS]' }}", "mistral"),
        ("{% if tools %}{{ '<|python_tag|>' }}{% endif %}", "llama3"),
        ({"default": "x", "tool_use": "<tool_call>"}, "qwen25"),
        (CHATML_TEMPLATE, None),
        (MISTRAL_TEMPLATE, None),
        ("<tool_call> [TOOL_CALLS]", None),  # ambiguous
        (None, None),
    ],
)
def test_parser_detected_from_the_chat_template(template, expected):
    assert detect_tool_call_parser(template) == expected
