"""--api-key against a real server of its own: every route but /health and /health_generate needs
``Authorization: Bearer <key>``; a missing or wrong key is a 401 OpenAI-style error; the right key (also through
the official openai client) works.

The routes are enumerated from the server's own /openapi.json (which needs the key too), plus FastAPI's docs
pages and the native routes of the seed documents, so a route added later is covered without editing this file.
"""

from __future__ import annotations

import openai
import psutil
import pytest
import requests

from sglkit.utils import terminate_process
from tests.server.conftest import start_server

API_KEY = "secret-key"
EXEMPT = {"/health", "/health_generate"}
# The seed's native routes and FastAPI's own pages: covered even if /openapi.json ever stopped listing them.
KNOWN_ROUTES = {
    ("/generate", "POST"),
    ("/get_server_args", "GET"),
    ("/get_model_info", "GET"),
    ("/get_server_info", "GET"),
    ("/server_info", "GET"),
    ("/flush_cache", "POST"),
    ("/get_memory_pool_size", "GET"),
    ("/update_weights", "POST"),
    ("/update_weights_from_disk", "POST"),
    ("/abort_request", "POST"),
    ("/metrics", "GET"),
    ("/v1/models", "GET"),
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/openapi.json", "GET"),
    ("/docs", "GET"),
    ("/redoc", "GET"),
    ("/docs/oauth2-redirect", "GET"),
}
WRONG_HEADERS = {
    "missing": {},
    "wrong-key": {"Authorization": "Bearer not-the-key"},
    "no-bearer": {"Authorization": API_KEY},
    "key-prefix": {"Authorization": f"Bearer {API_KEY[:-1]}"},
    "key-suffix": {"Authorization": f"Bearer {API_KEY}x"},
    "x-api-key": {"X-API-Key": API_KEY},
}
GOOD = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def key_server(server_model_path):
    """A server started with --api-key; its whole process tree is checked gone afterwards."""
    running = start_server(server_model_path, "--api-key", API_KEY)
    yield running
    tree = [
        psutil.Process(running.process.pid),
        *psutil.Process(running.process.pid).children(recursive=True),
    ]
    terminate_process(running.process)
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"


@pytest.fixture(scope="module")
def routes(key_server) -> list[tuple[str, str]]:
    """(path, method) of every route: /openapi.json (fetched with the key) plus KNOWN_ROUTES."""
    spec = requests.get(f"{key_server.base_url}/openapi.json", headers=GOOD)
    assert spec.status_code == 200
    found = {
        (path.replace("{model_id}", "some-model").replace("{response_id}", "resp_unknown"), method.upper())
        for path, ops in spec.json()["paths"].items()
        for method in ops
    }
    assert (
        KNOWN_ROUTES - {r for r in KNOWN_ROUTES if r[0].startswith(("/docs", "/redoc", "/openapi"))} <= found
    )
    return sorted(found | KNOWN_ROUTES)


def assert_unauthorized(response: requests.Response) -> None:
    assert response.status_code == 401, (response.request.method, response.request.url, response.text)
    error = response.json()["error"]
    assert error.keys() == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("how", sorted(WRONG_HEADERS))
def test_every_route_refuses_a_missing_or_wrong_key(key_server, routes, how):
    """Each non-exempt route x method answers 401 without the right key, before reading the body."""
    headers = WRONG_HEADERS[how]
    checked = 0
    for path, method in routes:
        if path in EXEMPT:
            continue
        response = requests.request(
            method,
            key_server.base_url + path,
            headers=headers,
            json={"text": "hi", "model_path": key_server.model_path, "abort_all": True},
        )
        assert_unauthorized(response)
        checked += 1
    assert checked >= len(KNOWN_ROUTES) - 1


def test_unknown_route_and_wrong_method_also_need_the_key(key_server):
    """Nothing about the app leaks without the key: not which routes exist, not which methods they take."""
    assert_unauthorized(requests.get(f"{key_server.base_url}/no_such_route"))
    assert_unauthorized(requests.get(f"{key_server.base_url}/flush_cache"))
    assert requests.get(f"{key_server.base_url}/flush_cache", headers=GOOD).status_code == 405


def test_health_routes_are_exempt(key_server):
    for path in sorted(EXEMPT):
        assert requests.get(key_server.base_url + path).status_code == 200
        assert requests.get(key_server.base_url + path, headers=WRONG_HEADERS["wrong-key"]).status_code == 200


def test_every_route_accepts_the_right_key(key_server, routes):
    """With the key, no route answers 401 (or a 5xx); bodies that make no sense are plain 400s."""
    for path, method in routes:
        if path in ("/update_weights", "/update_weights_from_disk"):
            body = {"model_path": key_server.model_path}  # the same weights again: harmless
        elif path == "/abort_request":
            body = {"abort_all": True}
        elif path == "/v1/chat/completions":
            body = {
                "model": key_server.model_path,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            }
        elif path == "/v1/completions":
            body = {"model": key_server.model_path, "prompt": "hi", "max_tokens": 2}
        elif path in ("/tokenize", "/v1/tokenize"):
            body = {"prompt": "hi"}
        elif path in ("/detokenize", "/v1/detokenize"):
            body = {"tokens": [1, 2]}
        elif path == "/parse_function_call":
            body = {"text": "hi", "tool_call_parser": "qwen25", "tools": []}
        elif path == "/separate_reasoning":
            body = {"text": "hi", "reasoning_parser": "qwen3"}
        elif path == "/v1/responses":
            body = {"model": key_server.model_path, "input": "hi", "max_output_tokens": 2}
        elif path == "/v1/score":
            body = {"query": "The capital is", "items": [" Paris"], "label_token_ids": [1, 2]}
        elif path == "/v1/rerank":
            body = {"query": "capital of France", "documents": ["Paris is.", "Rome is."]}
        else:
            body = {"text": "hi", "sampling_params": {"max_new_tokens": 2}}
        response = requests.request(method, key_server.base_url + path, headers=GOOD, json=body)
        assert response.status_code not in (401, 403), (path, method)
        assert response.status_code < 500, (path, method, response.text)
        if path in ("/encode", "/classify", "/v1/embeddings"):  # a generation model refuses these by design
            assert response.status_code == 400 and "generation model" in response.text, (path, method)
        elif path.startswith("/v1/responses/resp_unknown"):  # no such stored response: 404
            assert response.status_code == 404, (path, method, response.text)
        elif path not in ("/metrics", "/v1/models/some-model"):  # metrics are off; no such model: 404s
            assert response.status_code == 200, (path, method, response.text)


def test_native_generate_with_the_key(key_server):
    response = requests.post(
        f"{key_server.base_url}/generate",
        headers=GOOD,
        json={"text": "The capital of France is", "sampling_params": {"temperature": 0, "max_new_tokens": 8}},
    )
    assert response.status_code == 200
    assert response.json()["meta_info"]["finish_reason"] == {"type": "length", "length": 8}


def test_openai_client_with_the_key(key_server):
    """The official client sends the key as a Bearer token: chat, streaming and model listing work."""
    client = openai.Client(base_url=f"{key_server.base_url}/v1", api_key=API_KEY)
    assert [m.id for m in client.models.list()] == [key_server.model_path]
    response = client.chat.completions.create(
        model=key_server.model_path,
        temperature=0,
        max_tokens=8,
        messages=[{"role": "user", "content": "List 3 countries."}],
    )
    assert response.usage.completion_tokens == 8
    stream = client.chat.completions.create(
        model=key_server.model_path,
        temperature=0,
        max_tokens=8,
        stream=True,
        messages=[{"role": "user", "content": "List 3 countries."}],
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == response.choices[0].message.content


def test_openai_client_with_a_wrong_key_is_refused(key_server):
    client = openai.Client(base_url=f"{key_server.base_url}/v1", api_key="None", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as excinfo:
        client.chat.completions.create(
            model=key_server.model_path, max_tokens=2, messages=[{"role": "user", "content": "hi"}]
        )
    assert excinfo.value.status_code == 401
    assert excinfo.value.code == "invalid_api_key"
