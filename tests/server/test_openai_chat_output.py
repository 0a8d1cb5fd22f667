"""ChatOutputParser (sglkit/server/openai_chat_output.py): reasoning + tool calls into OpenAI message / deltas.

The streamed deltas of an answer, cut at every point, follow OpenAI's tool-call delta shape and accumulate into
the same message the non-streamed answer has.
"""

from __future__ import annotations

import pytest

from sglkit.server.openai_chat_output import ChatOutputOptions, chat_output_options, prompt_opens_reasoning
from sglkit.server.openai_tools import ToolPlan
from sglkit.testing.tiny_models import make_tokenizer

TOOLS = [{"type": "function", "function": {"name": n}} for n in ("get_weather", "add")]
ANSWER = (
    "<think>\nWeather first, then the sum.\n</think>\n\nChecking.\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
)
BOTH = ChatOutputOptions(reasoning_parser="qwen3", tool_parser="qwen25", tools=TOOLS)


def accumulate(deltas: list[dict]) -> dict:
    """A chat message from stream deltas, the way the openai client accumulates them (checking their shape)."""
    msg = {"content": "", "reasoning_content": "", "tool_calls": {}}
    for d in deltas:
        assert len(d) == 1, d
        for call in d.get("tool_calls", []):
            i = call["index"]
            if "id" in call:
                assert i not in msg["tool_calls"] and call["id"].startswith("call_") and len(call["id"]) == 29
                assert call["type"] == "function" and call["function"]["arguments"] == ""
                msg["tool_calls"][i] = {"id": call["id"], "name": call["function"]["name"], "arguments": ""}
            else:
                assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
                msg["tool_calls"][i]["arguments"] += call["function"]["arguments"]
        msg["content"] += d.get("content", "")
        msg["reasoning_content"] += d.get("reasoning_content", "")
    return msg


def whole(options: ChatOutputOptions, text: str) -> dict:
    fields = options.new_parser().parse_final(text)
    calls = {
        i: {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for i, c in enumerate(fields["tool_calls"] or [])
    }
    return {
        "content": fields["content"] or "",
        "reasoning_content": fields["reasoning_content"] or "",
        "tool_calls": calls,
    }


def without_ids(msg: dict) -> dict:
    return {**msg, "tool_calls": {i: {**c, "id": None} for i, c in msg["tool_calls"].items()}}


def test_final_message_fields_and_finish_reason():
    parser = BOTH.new_parser()
    fields = parser.parse_final(ANSWER)
    assert fields["reasoning_content"] == "Weather first, then the sum.\n"
    assert fields["content"] == "Checking."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in fields["tool_calls"]] == [
        ("get_weather", '{"city": "Paris"}'),
        ("add", '{"a": 1, "b": 2}'),
    ]
    assert len({c["id"] for c in fields["tool_calls"]}) == 2
    assert parser.finish_reason("stop") == "tool_calls" and parser.finish_reason("length") == "length"
    only_calls = (
        ChatOutputOptions(tool_parser="qwen25", tools=TOOLS)
        .new_parser()
        .parse_final(ANSWER.split("</think>")[1].replace("Checking.", ""))
    )
    assert only_calls["content"] is None and only_calls["reasoning_content"] is None


@pytest.mark.parametrize("step", [1, 3, 11])
def test_stream_accumulates_to_the_whole_answer(step):
    expected = without_ids(whole(BOTH, ANSWER))
    for cut in range(0, len(ANSWER) + 1, step):
        parser = BOTH.new_parser()
        deltas = parser.on_delta(ANSWER[:cut]) + parser.on_delta(ANSWER[cut:]) + parser.finish()
        assert without_ids(accumulate(deltas)) == expected, cut
    parser = BOTH.new_parser()
    deltas = [d for k in range(0, len(ANSWER), step) for d in parser.on_delta(ANSWER[k : k + step])]
    assert without_ids(accumulate(deltas + parser.finish())) == expected
    assert parser.has_tool_calls and parser.finish_reason("stop") == "tool_calls"


def test_parallel_tool_calls_false_keeps_the_first_call():
    options = ChatOutputOptions(tool_parser="qwen25", tools=TOOLS, parallel_tool_calls=False)
    assert [c["function"]["name"] for c in options.new_parser().parse_final(ANSWER)["tool_calls"]] == [
        "get_weather"
    ]
    parser = options.new_parser()
    streamed = accumulate(parser.on_delta(ANSWER) + parser.finish())
    assert [c["name"] for c in streamed["tool_calls"].values()] == ["get_weather"]


def test_options_for_a_request():
    auto = ToolPlan(template_tools=TOOLS, parser="qwen25")
    forced = ToolPlan(template_tools=TOOLS, parser="json_array", json_schema="{}")
    assert chat_output_options(ToolPlan(), None, True, True, False) is None
    assert chat_output_options(ToolPlan(), "qwen3", False, True, False) is None  # separate_reasoning off
    opts = chat_output_options(auto, "qwen3", True, False, True)
    assert (opts.reasoning_parser, opts.tool_parser, opts.stream_reasoning, opts.force_reasoning) == (
        "qwen3",
        "qwen25",
        False,
        True,
    )
    assert (
        chat_output_options(forced, "qwen3", True, True, False).reasoning_parser is None
    )  # JSON from token 1


def test_prompt_opens_reasoning():
    tok = make_tokenizer()
    assert prompt_opens_reasoning(tok, tok.encode("<|im_start|>assistant\n<think>\n"))
    assert not prompt_opens_reasoning(tok, tok.encode("<|im_start|>assistant\n<think>\n\n</think>\n\n"))
    assert not prompt_opens_reasoning(tok, tok.encode("<|im_start|>assistant\n"))
