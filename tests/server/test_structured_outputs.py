"""Structured outputs through the real server: OpenAI ``response_format`` (openai client, ``parse``), SGLang's
grammar extras and native ``/generate`` grammars, streaming, and 400s naming the field for bad grammars."""

from __future__ import annotations

import json
import re
from typing import Literal

import jsonschema
import openai
import pytest
import requests
from pydantic import BaseModel, Field

import sglkit

CITY_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "population": {"type": "integer", "minimum": 0, "maximum": 99999},
        "capital": {"type": "boolean"},
    },
    "required": ["city", "population", "capital"],
}
ASK = [{"role": "user", "content": "Give me a city as JSON."}]


class City(BaseModel):
    """What ``chat.completions.parse`` should return."""

    name: str = Field(max_length=8)
    size: Literal["small", "big"]
    rank: int = Field(ge=1, le=50)


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="None", max_retries=0) as c:
        yield c


def generate(server, body: dict) -> requests.Response:
    return requests.post(f"{server.base_url}/generate", json=body, timeout=120)


def test_chat_response_format_json_schema(client, server):
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True}}
    for temperature in (0, 0.9):
        resp = client.chat.completions.create(
            model=server.model_path,
            messages=ASK,
            response_format=fmt,
            max_tokens=200,
            temperature=temperature,
        )
        choice = resp.choices[0]
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), CITY_SCHEMA)


def test_chat_completions_parse_with_pydantic(client, server):
    resp = client.chat.completions.parse(
        model=server.model_path, messages=ASK, response_format=City, max_tokens=200, temperature=0
    )
    parsed = resp.choices[0].message.parsed
    assert isinstance(parsed, City)
    assert City.model_validate_json(resp.choices[0].message.content) == parsed


def test_json_object_mode_gives_an_object(client, server):
    resp = client.chat.completions.create(
        model=server.model_path,
        messages=ASK,
        response_format={"type": "json_object"},
        max_tokens=300,
        temperature=0,
    )
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(resp.choices[0].message.content), dict)
    else:  # any JSON object may be long: what came out is an unfinished object
        assert resp.choices[0].message.content.startswith("{")


def test_streamed_json_schema_concatenates_to_valid_json(client, server):
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}}
    kwargs = dict(model=server.model_path, messages=ASK, response_format=fmt, max_tokens=200, temperature=0)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(stream=True, **kwargs)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == whole
    jsonschema.validate(json.loads(text), CITY_SCHEMA)


def test_completion_regex_and_ebnf_extras(client, server):
    pattern = r"(red|green|blue)-[0-9]{2,3}"
    resp = client.completions.create(
        model=server.model_path,
        prompt="Color code:",
        max_tokens=20,
        n=3,
        temperature=1.0,
        extra_body={"regex": pattern},
    )
    for choice in resp.choices:
        assert re.fullmatch(pattern, choice.text), choice.text
    resp = client.completions.create(
        model=server.model_path,
        prompt="Say:",
        max_tokens=20,
        temperature=0,
        extra_body={"ebnf": 'root ::= "yes" | "no" | "maybe"'},
    )
    assert resp.choices[0].text in ("yes", "no", "maybe")


def test_native_generate_grammars_match_the_offline_engine(server):
    cases = [
        {"json_schema": json.dumps(CITY_SCHEMA)},
        {"regex": r"[A-Z][a-z]{2,6}, [0-9]{4}"},
        {"ebnf": 'root ::= item ("," item){0,3}\nitem ::= [a-c]+ | "z"'},
    ]
    prompts = ["A city:", "Name and year:", "List:"]
    params = [{"temperature": 0, "max_new_tokens": 120, **c} for c in cases]
    resp = generate(server, {"text": prompts, "sampling_params": params})
    assert resp.status_code == 200, resp.text
    online = [o["text"] for o in resp.json()]
    jsonschema.validate(json.loads(online[0]), CITY_SCHEMA)
    assert re.fullmatch(r"[A-Z][a-z]{2,6}, [0-9]{4}", online[1])
    assert re.fullmatch(r"([a-c]+|z)(,([a-c]+|z)){0,3}", online[2])
    with sglkit.Engine(model_path=server.model_path, random_seed=0) as llm:
        offline = [o["text"] for o in llm.generate(prompts, params)]
    assert offline == online


def test_native_stream_with_regex(server):
    body = {
        "text": "Code:",
        "stream": True,
        "sampling_params": {"regex": "[0-9]{3}-[0-9]{3}", "temperature": 0},
    }
    with requests.post(f"{server.base_url}/generate", json=body, stream=True, timeout=60) as resp:
        assert resp.status_code == 200
        events = [line[6:] for line in resp.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    assert re.fullmatch("[0-9]{3}-[0-9]{3}", final["text"]), final["text"]


@pytest.mark.parametrize(
    "route, body, param",
    [
        ("/generate", {"text": "x", "sampling_params": {"json_schema": "{oops"}}, "json_schema"),
        (
            "/generate",
            {"text": "x", "sampling_params": {"json_schema": '{"type": "nonsense"}'}},
            "json_schema",
        ),
        ("/generate", {"text": "x", "sampling_params": {"regex": "(unclosed"}}, "regex"),
        ("/generate", {"text": "x", "sampling_params": {"ebnf": "root ::= missing"}}, "ebnf"),
        ("/generate", {"text": "x", "sampling_params": {"regex": "a", "json_schema": "{}"}}, "regex"),
        ("/v1/chat/completions", {"messages": ASK, "response_format": {"type": "yaml"}}, "response_format"),
        (
            "/v1/chat/completions",
            {
                "messages": ASK,
                "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 3}}},
            },
            "response_format",
        ),
        ("/v1/completions", {"prompt": "x", "regex": "[z-a]"}, "regex"),
    ],
)
def test_bad_grammars_are_400_naming_the_field(server, route, body, param):
    resp = requests.post(f"{server.base_url}{route}", json=body, timeout=30)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"] if "error" in resp.json() else resp.json()
    assert error["param"] == param, error
    ok = generate(server, {"text": "Hi", "sampling_params": {"max_new_tokens": 2, "regex": "ok"}})
    assert ok.status_code == 200 and ok.json()["text"] == "ok"
