"""Tool requests, in-process (sglkit/server/openai_tools.py, the tool parts of protocol.py and openai_prompt.py).

Validation (400s naming the field), the plan each tool_choice makes, legacy functions, and what the chat template
receives (JSON-string arguments as objects; continue_final_message).
"""

from __future__ import annotations

import json

import pytest
from fastapi.exceptions import RequestValidationError

from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError
from sglkit.server.openai_prompt import generation_flags, template_messages
from sglkit.server.openai_tools import add_tool_constraint, resolve_tool_call_parser, resolve_tool_plan
from sglkit.server.protocol import ChatCompletionRequest, validate_request

USER = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ADD = {"type": "function", "function": {"name": "add"}}


def request(**body) -> ChatCompletionRequest:
    return validate_request(ChatCompletionRequest, {"messages": USER, **body})  # type: ignore[return-value]


def refusal(**body) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as e:
        resolve_tool_plan(request(**body), "qwen25")
    return e.value


def test_no_tools_no_plan():
    plan = resolve_tool_plan(request(), "qwen25")
    assert (plan.template_tools, plan.parser, plan.json_schema) == (None, None, None)


def test_auto_is_the_default_and_uses_the_model_parser():
    plan = resolve_tool_plan(request(tools=[WEATHER, ADD]), "qwen25")
    assert plan.parser == "qwen25" and plan.json_schema is None
    assert [t["function"]["name"] for t in plan.template_tools] == ["get_weather", "add"]
    assert plan.template_tools[0] == WEATHER


def test_none_hides_tools_from_the_template_and_parses_nothing():
    plan = resolve_tool_plan(request(tools=[WEATHER], tool_choice="none"), "qwen25")
    assert (plan.template_tools, plan.parser, plan.json_schema) == (None, None, None)


@pytest.mark.parametrize(
    ("choice", "names"),
    [("required", ["get_weather", "add"]), ({"type": "function", "function": {"name": "add"}}, ["add"])],
)
def test_required_and_named_force_a_json_array(choice, names):
    plan = resolve_tool_plan(
        request(tools=[WEATHER, ADD], tool_choice=choice, parallel_tool_calls=False), None
    )
    assert plan.parser == "json_array" and not plan.parallel_tool_calls
    schema = json.loads(plan.json_schema)
    assert schema["type"] == "array" and schema["maxItems"] == 1
    items = schema["items"].get("anyOf", [schema["items"]])
    assert [i["properties"]["name"]["enum"][0] for i in items] == names
    inp = GenerateInput(input_ids=[1, 2], sampling_params={"max_new_tokens": 8})
    add_tool_constraint(inp, plan)
    assert inp.sampling_params["json_schema"] == plan.json_schema


def test_forced_calls_and_another_grammar_conflict():
    plan = resolve_tool_plan(request(tools=[WEATHER], tool_choice="required"), None)
    inp = GenerateInput(input_ids=[1], sampling_params={"regex": "a+"})
    with pytest.raises(InvalidRequestError) as e:
        add_tool_constraint(inp, plan)
    assert e.value.param == "tool_choice"


def test_tool_choice_without_tools_is_refused():
    for choice in ("auto", "required", "none", {"type": "function", "function": {"name": "add"}}):
        err = refusal(tool_choice=choice)
        assert err.param == "tool_choice" and "tools" in str(err)


def test_named_tool_must_be_in_tools():
    err = refusal(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "delete_all"}})
    assert err.param == "tool_choice" and "delete_all" in str(err)


def test_duplicate_names_and_non_object_parameters_are_refused():
    assert refusal(tools=[ADD, ADD]).param == "tools"
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}
    assert refusal(tools=[bad]).param == "tools"


@pytest.mark.parametrize(
    ("tools", "loc"),
    [
        ([{"type": "function"}], "function"),  # no function
        ([{"type": "retrieval", "function": {"name": "f"}}], "type"),
        ([{"type": "function", "function": {"name": "has space"}}], "name"),
        ([{"type": "function", "function": {"name": "f", "parameters": "not an object"}}], "parameters"),
        ("get_weather", "tools"),
    ],
)
def test_malformed_tool_definitions_name_the_field(tools, loc):
    with pytest.raises(RequestValidationError) as e:
        request(tools=tools)
    (err,) = e.value.errors()[:1]
    assert err["loc"][1] == "tools" and loc in err["loc"]


def test_bad_tool_choice_values_are_validation_errors():
    for choice in ("sometimes", {"type": "function"}, 3):
        with pytest.raises(RequestValidationError) as e:
            request(tools=[WEATHER], tool_choice=choice)
        assert e.value.errors()[0]["loc"][1] == "tool_choice"


def test_legacy_functions_map_to_tools():
    plan = resolve_tool_plan(
        request(functions=[WEATHER["function"]], function_call={"name": "get_weather"}), None
    )
    assert plan.template_tools == [WEATHER] and plan.parser == "json_array"
    plan = resolve_tool_plan(request(functions=[WEATHER["function"]]), "qwen25")
    assert plan.parser == "qwen25"
    assert refusal(functions=[WEATHER["function"]], function_call={"name": "nope"}).param == "function_call"
    assert refusal(function_call="auto").param == "function_call"
    assert refusal(tools=[WEATHER], functions=[WEATHER["function"]]).param == "functions"


def test_parser_from_flag_or_template():
    assert resolve_tool_call_parser("llama3", "<tool_call>") == "llama3"
    assert resolve_tool_call_parser(None, "<tool_call>") == "qwen25"
    assert resolve_tool_call_parser(None, "{{ messages }}") is None


def test_tool_call_arguments_reach_the_template_as_objects():
    messages = USER + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": "not json"}},
            ],
            "reasoning_content": "Need the weather.",
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    out = template_messages(request(messages=messages))
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert out[1]["tool_calls"][1]["function"]["arguments"] == "not json"
    assert out[1]["content"] == "" and out[1]["reasoning_content"] == "Need the weather."
    assert out[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}


def test_generation_flags():
    assert generation_flags(request()) == (True, False)
    assert generation_flags(request(add_generation_prompt=False)) == (False, False)
    cont = USER + [{"role": "assistant", "content": "It is"}]
    assert generation_flags(request(messages=cont, continue_final_message=True)) == (False, True)
    for body in (
        {"messages": cont, "continue_final_message": True, "add_generation_prompt": True},
        {"continue_final_message": True},  # last message is the user's
    ):
        with pytest.raises(InvalidRequestError) as e:
            generation_flags(request(**body))
        assert e.value.param == "continue_final_message"
