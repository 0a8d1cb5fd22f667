"""Tests for sglkit/server/protocol.py (body parsing, request models) and sglkit/server/errors.py (error bodies
and handlers), with FastAPI's TestClient on a tiny app: no model, no server."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from pydantic import BaseModel

from sglkit.core.sampling_params import SamplingParamError
from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.errors import OpenAIError, error_response, install_error_handlers, loc_to_param
from sglkit.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_json_object,
    validate_request,
)
from sglkit.server.tokenizer_manager import ServerUnavailableError

ERROR_KEYS = {"message", "type", "param", "code"}


# ----------------------------------------------------------------------------- parse_json_object
def test_parse_json_object_accepts_an_object():
    assert parse_json_object(b'{"a": [1, "x"], "b": null}') == {"a": [1, "x"], "b": None}


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"abc{{", "not valid JSON"),
        (b'{"a": 1', "not valid JSON"),
        (b'"string"', "JSON object"),
        (b"[1, 2]", "JSON object"),
        (b"42", "JSON object"),
        (b"null", "JSON object"),
        (b'{"a": "\xff\xfe"}', "UTF-8"),
        (b"[" * 100000 + b"]" * 100000, ""),
    ],
)
def test_parse_json_object_refuses_non_objects(raw, fragment):
    with pytest.raises(InvalidRequestError) as info:
        parse_json_object(raw)
    assert fragment in str(info.value)
    assert info.value.param is None


def test_parse_json_object_refuses_lone_surrogates_and_names_the_field():
    with pytest.raises(InvalidRequestError) as info:
        parse_json_object(b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800b"}]}')
    assert info.value.param == "messages"
    with pytest.raises(InvalidRequestError):
        parse_json_object(b'{"stop": ["\\udfff"]}')


def test_parse_json_object_keeps_valid_surrogate_pairs():
    assert parse_json_object(b'{"prompt": "\\ud83d\\ude00"}') == {"prompt": "\U0001f600"}


# ----------------------------------------------------------------------------- request models
def _validation_errors(model, body) -> list[dict]:
    with pytest.raises(RequestValidationError) as info:
        validate_request(model, body)
    return list(info.value.errors())


def test_chat_request_minimal_and_extras():
    req = validate_request(
        ChatCompletionRequest,
        {
            "messages": [{"role": "user", "content": "hi"}],
            "top_k": 5,
            "min_tokens": 2,
            "logit_bias": {"17": -1.5},
            "unknown_field": {"x": 1},
            "user": "u1",
        },
    )
    assert req.messages[0].content == "hi" and req.top_k == 5 and req.logit_bias == {"17": -1.5}
    assert req.model is None and req.n is None and not req.stream and not req.include_usage


def test_chat_request_content_parts():
    req = validate_request(
        ChatCompletionRequest,
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ]
        },
    )
    assert [p.text for p in req.messages[0].content] == ["a", "b"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
        ),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": "0.5"}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": True}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "16"}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "n": True}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 21}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": "a"}}, "logit_bias"),
    ],
)
def test_chat_request_validation_errors_name_the_field(body, param):
    errors = _validation_errors(ChatCompletionRequest, body)
    assert loc_to_param(errors[0]["loc"]) == param
    assert all("input" not in err for err in errors)


def test_integral_floats_are_integers():
    req = validate_request(
        ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 16.0}
    )
    assert req.max_tokens == 16 and isinstance(req.max_tokens, int)


@pytest.mark.parametrize(
    "prompt",
    ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]], []],
)
def test_completion_prompt_forms(prompt):
    assert validate_request(CompletionRequest, {"prompt": prompt}).prompt == prompt


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "prompt"),
        ({"prompt": ["a", 1]}, "prompt"),
        ({"prompt": [True]}, "prompt"),
        ({"prompt": "x", "logprobs": 6}, "logprobs"),
        ({"prompt": "x", "echo": 1}, "echo"),
    ],
)
def test_completion_validation_errors(body, param):
    assert loc_to_param(_validation_errors(CompletionRequest, body)[0]["loc"]) == param


def test_nulls_mean_defaults():
    req = validate_request(
        CompletionRequest,
        {
            "prompt": "x",
            "max_tokens": None,
            "n": None,
            "stream": None,
            "echo": None,
            "stream_options": None,
            "model": None,
        },
    )
    assert req.max_tokens is None and req.n is None and not req.include_usage


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "loc, param",
    [
        (("body",), None),
        (("body", "messages"), "messages"),
        (("body", "messages", 0, "content", "str"), "messages[0].content"),
        (("body", "prompt", "list[int]", 0), "prompt"),
        (("query", "x"), "x"),
        (("body", "a", "function-after[f(), str]"), "a"),
        (("body", 3), None),
    ],
)
def test_loc_to_param(loc, param):
    assert loc_to_param(loc) == param


class Item(BaseModel):
    name: str
    count: int = 0


def make_app() -> FastAPI:
    app = FastAPI()

    @app.post("/item")
    async def item(obj: Item) -> dict:
        return {"name": obj.name}

    @app.post("/raw")
    async def raw(request: Request) -> dict:
        return validate_request(ChatCompletionRequest, parse_json_object(await request.body())).model_dump()

    @app.get("/invalid")
    async def invalid() -> dict:
        raise InvalidRequestError("text must be a string.", "text")

    @app.get("/sampling")
    async def sampling() -> dict:
        raise SamplingParamError("top_p", "top_p must be in (0, 1], got 2.0")

    @app.get("/unavailable")
    async def unavailable() -> dict:
        raise ServerUnavailableError("The scheduler process died.")

    @app.get("/teapot")
    async def teapot() -> dict:
        raise OpenAIError(418, "I am a teapot.", "pot", code="teapot")

    @app.get("/bug")
    async def bug() -> dict:
        raise RuntimeError("secret internal detail")

    install_error_handlers(app)
    return app


@pytest.fixture(scope="module")
def client():
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    return body["error"]


def test_error_response_shape():
    resp = error_response(400, "bad", "temperature")
    assert resp.status_code == 400
    assert json.loads(resp.body) == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "temperature", "code": 400}
    }
    assert json.loads(error_response(503, "down").body)["error"]["type"] == "server_error"
    assert (
        json.loads(error_response(400, "x", code="model_not_found").body)["error"]["code"]
        == "model_not_found"
    )


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"abc{{", "not valid JSON"),
        (b'"string"', "JSON object"),
        (b"[1]", "JSON object"),
        (b"null", "JSON object"),
        (b"42", "JSON object"),
    ],
)
def test_fastapi_body_errors_are_400_without_param(client, content, fragment):
    err = _error(client.post("/item", content=content, headers={"content-type": "application/json"}), 400)
    assert fragment in err["message"] and err["param"] is None and err["type"] == "invalid_request_error"


def test_fastapi_validation_errors_are_400_naming_the_field(client):
    body = b'{"name": "a", "count": "many\\ud800"}'
    err = _error(client.post("/item", content=body, headers={"content-type": "application/json"}), 400)
    assert err["param"] == "count" and "many" not in err["message"]
    assert _error(client.post("/item", json={}), 400)["param"] == "name"


def test_invalid_utf8_and_lone_surrogates_never_500(client):
    bad = b'{"name": "\xff\xfe\xfa"}'
    assert _error(client.post("/item", content=bad, headers={"content-type": "application/json"}), 400)
    assert _error(client.post("/raw", content=bad), 400)["message"] == "The request body is not valid UTF-8."
    surrogate = b'{"messages": [{"role": "user\\ud800", "content": "x"}]}'
    assert _error(client.post("/raw", content=surrogate), 400)["param"] == "messages"
    weird = b'{"messages": [[{"role": "R_WR6\\ud800"}]]}'
    assert _error(client.post("/raw", content=weird), 400)["param"] == "messages"


def test_manual_validation_errors_are_400(client):
    err = _error(client.post("/raw", json={"messages": []}), 400)
    assert err["param"] == "messages" and "messages" in err["message"]
    err = _error(
        client.post("/raw", content=b'{"messages": [{"role": "user", "content": "x"}], "top_p": "a"}'), 400
    )
    assert err["param"] == "top_p"


def test_runtime_errors_keep_their_param(client):
    assert _error(client.get("/invalid"), 400)["param"] == "text"
    err = _error(client.get("/sampling"), 400)
    assert err["param"] == "top_p" and err["message"].startswith("top_p")


def test_openai_error_and_unavailable(client):
    assert _error(client.get("/teapot"), 418) == {
        "message": "I am a teapot.",
        "type": "invalid_request_error",
        "param": "pot",
        "code": "teapot",
    }
    err = _error(client.get("/unavailable"), 503)
    assert err["type"] == "server_error" and "scheduler" in err["message"]


def test_unexpected_errors_are_generic_500s(client, caplog):
    err = _error(client.get("/bug"), 500)
    assert err["type"] == "server_error" and "secret" not in err["message"]
    assert "secret internal detail" in caplog.text  # logged with its traceback


def test_starlette_404_and_405_use_the_same_shape(client):
    err = _error(client.get("/nope"), 404)
    assert "/nope" in err["message"] and err["code"] == 404
    resp = client.get("/item")
    assert _error(resp, 405)["type"] == "invalid_request_error"
    assert resp.headers["allow"] == "POST"
