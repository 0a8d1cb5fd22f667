"""The OpenAI Responses API (sglkit/server/responses_*.py) over real HTTP, on the trained demo model.

One server on the demo model with ``--reasoning-parser qwen3``: the model answers known facts, calls its
get_weather tool and answers from the tool's result, thinks when ``enable_thinking`` is on, and writes a capital
as JSON, so answers are checked for meaning. Clients: the official ``openai`` client (``responses.create``,
``responses.parse``, the ``responses.stream`` helper, retrieve / delete / input_items), LangChain's ``ChatOpenAI``
with ``use_responses_api=True`` and raw HTTP for the 400s and the SSE framing.
"""

from __future__ import annotations

import json
import os

import jsonschema
import openai
import pytest
import requests
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from sglkit.server.responses_output import ResponseEvents, ResponseHead
from sglkit.server.responses_store import ResponseStore, StoredResponse
from sglkit.testing.demo import default_model_path
from sglkit.utils import terminate_process
from tests.server.conftest import start_server

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city's name."}},
        "required": ["city"],
    },
}
ADD = {
    "type": "function",
    "name": "add",
    "description": "Add two integers.",
    "parameters": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
}
CAPITAL_SCHEMA = {
    "type": "object",
    "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
    "required": ["country", "capital"],
    "additionalProperties": False,
}
FRANCE = "What is the capital of France?"
PARIS = "The capital of France is Paris."
PARIS_WEATHER = json.dumps({"city": "Paris", "temperature": 21, "condition": "sunny"})


@pytest.fixture(scope="module")
def server():
    """The demo-model server (stopped at the end of the module)."""
    os.environ.setdefault("SGLKIT_ECHO_LOGS", "0")
    running = start_server(default_model_path(), "--reasoning-parser qwen3 --max-total-tokens 4096")
    yield running
    terminate_process(running.process)


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="None", max_retries=0) as c:
        yield c


def create(client, **kwargs):
    """A greedy response."""
    return client.responses.create(**{"model": "default", "temperature": 0, **kwargs})


def post(server, body: dict) -> requests.Response:
    return requests.post(f"{server.base_url}/v1/responses", json=body, timeout=120)


# ----------------------------------------------------------------------------- plain answers
def test_plain_text_input(client):
    r = create(client, input=FRANCE)
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text == PARIS
    (message,) = r.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [part.type for part in message.content] == ["output_text"]
    u = r.usage
    assert u.input_tokens > 0 and u.output_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.output_tokens_details.reasoning_tokens == 0 and u.input_tokens_details.cached_tokens >= 0
    assert (r.error, r.incomplete_details, r.previous_response_id, r.store) == (None, None, None, True)


def test_instructions_and_message_items(client):
    plain = create(client, input=FRANCE)
    r = create(
        client,
        instructions="You are a helpful assistant. Answer briefly.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": FRANCE}]}],
        metadata={"team": "docs"},
    )
    assert r.output_text == PARIS
    assert r.instructions == "You are a helpful assistant. Answer briefly." and r.metadata == {"team": "docs"}
    assert r.usage.input_tokens > plain.usage.input_tokens  # the system turn reached the prompt


def test_json_schema_text_format(client):
    r = create(
        client,
        input="What is the capital of France? Answer in JSON.",
        text={"format": {"type": "json_schema", "name": "capital", "schema": CAPITAL_SCHEMA, "strict": True}},
    )
    answer = json.loads(r.output_text)
    jsonschema.validate(answer, CAPITAL_SCHEMA)
    assert answer == {"country": "France", "capital": "Paris"}
    assert r.text.format.type == "json_schema"


def test_parse_with_a_pydantic_model(client):
    class Capital(BaseModel):
        country: str
        capital: str

    r = client.responses.parse(
        model="default",
        temperature=0,
        input="What is the capital of Japan? Answer in JSON.",
        text_format=Capital,
    )
    assert r.output_parsed == Capital(country="Japan", capital="Tokyo")


def test_max_output_tokens_makes_an_incomplete_response(client):
    r = create(client, input=FRANCE, max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and PARIS.startswith(r.output_text)


# ----------------------------------------------------------------------------- tools
def test_tool_round_trip(client):
    first = create(client, input="What's the weather in Paris?", tools=[WEATHER, ADD])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.id.startswith("fc_")
    assert call.call_id.startswith("call_") and json.loads(call.arguments) == {"city": "Paris"}
    assert first.output_text == "" and first.tools[0].name == "get_weather"
    result = {"type": "function_call_output", "call_id": call.call_id, "output": PARIS_WEATHER}
    history = [{"role": "user", "content": "What's the weather in Paris?"}, *first.output, result]
    second = create(client, input=history, tools=[WEATHER, ADD])
    assert second.output_text == "It is sunny and 21 °C in Paris."
    # The same round trip continuing the stored conversation.
    third = create(client, input=[result], previous_response_id=first.id, tools=[WEATHER, ADD])
    assert third.output_text == second.output_text and third.previous_response_id == first.id


def test_tool_choice_none_and_a_named_function(client):
    plain = create(client, input="What is 2 + 3?", tools=[WEATHER, ADD], tool_choice="none")
    assert plain.output_text == "2 + 3 = 5." and plain.tool_choice == "none"
    forced = create(
        client,
        input="What is 12 + 30?",
        tools=[WEATHER, ADD],
        tool_choice={"type": "function", "name": "add"},
    )
    assert [(c.type, c.name) for c in forced.output] == [("function_call", "add")]
    jsonschema.validate(json.loads(forced.output[0].arguments), ADD["parameters"])


# ----------------------------------------------------------------------------- conversation state
def test_previous_response_id_continues_the_conversation(client):
    first = create(client, input=FRANCE, instructions="You are a helpful assistant. Answer briefly.")
    fresh = create(client, input="What is the capital of Japan?")
    second = create(client, input="What is the capital of Japan?", previous_response_id=first.id)
    assert second.output_text == fresh.output_text == "The capital of Japan is Tokyo."
    assert second.previous_response_id == first.id
    assert second.instructions is None  # instructions are not inherited
    assert second.usage.input_tokens > fresh.usage.input_tokens  # the first turn is in the prompt


def test_retrieve_delete_cancel_and_input_items(client, server):
    r = create(client, input=FRANCE)
    assert client.responses.retrieve(r.id).model_dump() == r.model_dump()
    items = client.responses.input_items.list(r.id)
    assert [(i.type, i.role, i.content[0].text) for i in items.data] == [("message", "user", FRANCE)]
    resp = requests.post(f"{server.base_url}/v1/responses/{r.id}/cancel", timeout=30)
    assert resp.status_code == 400 and "background" in resp.json()["error"]["message"]
    client.responses.delete(r.id)
    for call in (lambda: client.responses.retrieve(r.id), lambda: client.responses.delete(r.id)):
        with pytest.raises(openai.NotFoundError) as e:
            call()
        assert e.value.body["message"] == f"Response with id '{r.id}' not found."
    unstored = create(client, input=FRANCE, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


# ----------------------------------------------------------------------------- streaming
def test_stream_helper_text(client):
    with client.responses.stream(model="default", input=FRANCE, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == PARIS
    assert final.status == "completed" and final.usage.output_tokens > 0
    assert client.responses.retrieve(final.id).output_text == PARIS


def test_stream_tool_call_and_incomplete(client):
    with client.responses.stream(
        model="default", input="What's the weather in Paris?", tools=[WEATHER], temperature=0
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    (call,) = final.output
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert call.type == "function_call" and json.loads(args) == json.loads(call.arguments) == {
        "city": "Paris"
    }
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert (done.name, done.arguments) == ("get_weather", call.arguments)
    cut = list(create(client, input=FRANCE, max_output_tokens=3, stream=True))
    assert (
        cut[-1].type == "response.incomplete"
        and cut[-1].response.incomplete_details.reason == "max_output_tokens"
    )


def test_sse_framing(server):
    body = {"model": "default", "input": FRANCE, "temperature": 0, "stream": True}
    with requests.post(f"{server.base_url}/v1/responses", json=body, stream=True, timeout=120) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in resp.text.split("\n\n") if b.strip()]
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert json.loads(data_line.removeprefix("data: "))["type"] == event_line.removeprefix("event: ")


# ----------------------------------------------------------------------------- reasoning
def test_reasoning_item_when_thinking(client):
    r = create(client, input="What is 2 + 3?", extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and "5" in reasoning.content[0].text
    assert r.output_text == "2 + 3 = 5." and r.usage.output_tokens_details.reasoning_tokens > 0
    with client.responses.stream(
        model="default",
        input="What is 2 + 3?",
        temperature=0,
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    streamed = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert streamed == final.output[0].content[0].text == reasoning.content[0].text
    off = create(
        client,
        input="What is 2 + 3?",
        reasoning={"effort": "none"},
        extra_body={"chat_template_kwargs": {"enable_thinking": True}},
    )
    assert [i.type for i in off.output] == ["message"] and off.output_text == "2 + 3 = 5."


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        (
            {"input": "hi", "frobnicate": 1},
            "frobnicate",
            "Unrecognized request argument supplied: frobnicate",
        ),
        ({"input": "hi", "background": True}, "background", "background responses are not supported"),
        ({"input": "hi", "reasoning": {"summary": "auto"}}, "reasoning", "summaries are not supported"),
        ({"input": "hi", "reasoning": {"effort": "high"}}, "reasoning", "only 'none'"),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type", "'function'"),
        ({"input": "hi", "text": {"format": {"type": "xml"}}}, "text.format", "not supported"),
        ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format", "schema"),
        ({"input": []}, "input", "non-empty"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input", "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input", "input[0].content[0]"),
        ({"input": "hi", "max_output_tokens": -1}, "max_output_tokens", "max_output_tokens"),
        ({"input": "hi", "previous_response_id": "resp_nope"}, "previous_response_id", "not found"),
        ({"input": "hi", "tool_choice": "required"}, "tool_choice", "tools"),
        ({"input": "hi", "model": "gpt-4o"}, "model", "does not exist"),
        ({}, "input", "Field required"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(server, body, param, words):
    resp = post(server, body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert words in error["message"]


def test_unknown_ids_are_404s(server):
    for method, path in (("get", ""), ("delete", ""), ("post", "/cancel"), ("get", "/input_items")):
        resp = requests.request(method, f"{server.base_url}/v1/responses/resp_missing{path}", timeout=30)
        assert resp.status_code == 404 and resp.json()["error"]["param"] == "response_id"


# ----------------------------------------------------------------------------- LangChain
def test_langchain_chat_openai_with_the_responses_api(server):
    llm = ChatOpenAI(
        model="default",
        base_url=f"{server.base_url}/v1",
        api_key="None",
        temperature=0,
        use_responses_api=True,
        max_retries=0,
    )
    reply = llm.invoke(FRANCE)
    assert reply.text == PARIS
    assert reply.response_metadata["id"].startswith("resp_") and reply.usage_metadata["output_tokens"] > 0


# ----------------------------------------------------------------------------- the store (in process)
def test_store_is_a_bounded_lru():
    store = ResponseStore(capacity=2)
    for name in ("a", "b"):
        store.put(StoredResponse({"id": name}, [], []))
    assert store.get("a") is not None  # a is now the most recently used
    store.put(StoredResponse({"id": "c"}, [], []))
    assert (store.get("b"), len(store)) == (None, 2)
    assert store.delete("a") and not store.delete("a") and store.get("c") is not None


def test_a_failure_after_the_start_is_response_failed():
    """In process: the events a stream ends with when its request fails mid-way (the open item is closed)."""
    writer = ResponseEvents(ResponseHead("resp_x", "m", {"store": True}))
    blocks = (
        writer.start()
        + writer.on_deltas([{"content": "Hel"}])
        + writer.fail("The server gave up.", "server_error")[0]
    )
    events = []
    for block in blocks:
        event_line, data_line = block.strip().split("\n")
        events.append(json.loads(data_line.removeprefix("data: ")))
        assert events[-1]["type"] == event_line.removeprefix("event: ")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events][-3:] == [
        "response.content_part.done",
        "response.output_item.done",
        "response.failed",
    ]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {
        "code": "server_error",
        "message": "The server gave up.",
    }
    assert (
        failed["output"][0]["content"][0]["text"] == "Hel" and failed["output"][0]["status"] == "incomplete"
    )
