"""Bad requests against the real server (shared ``server``): each is an HTTP 400 (413 / 405 where HTTP says so)
with an OpenAI-style error body naming the parameter, never a 500, and the server keeps serving.

Covers the native /generate and the OpenAI /v1/completions and /v1/chat/completions routes (plus the control
routes' bodies): malformed and non-object JSON, wrong types, out-of-range sampling values, empty prompts,
context overflow, unknown models, bad token ids, invalid Unicode, oversized bodies, wrong HTTP methods.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

ERROR_KEYS = {"message", "type", "param", "code"}
SURROGATE_IN_STRING = b"\\ud800"  # a JSON escape of a lone surrogate
CHAT_MESSAGES = [{"role": "user", "content": "hi"}]

# (route, body, expected param); a body given as bytes is sent raw, anything else as JSON.
GENERATE = "/generate"
COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"


def _completion(model: str, **fields: Any) -> dict:
    return {"model": model, "prompt": "hi", "max_tokens": 2, **fields}


def _chat(model: str, **fields: Any) -> dict:
    return {"model": model, "messages": CHAT_MESSAGES, "max_tokens": 2, **fields}


def body_cases(model: str, context_len: int) -> list[tuple[str, str, Any, str | None]]:
    """(id, route, body, expected param) for every bad-body case; ``model`` is the served name."""
    cases: list[tuple[str, str, Any, str | None]] = []
    for route in (GENERATE, COMPLETIONS, CHAT, "/update_weights", "/abort_request"):
        cases += [
            (f"malformed-json{route}", route, b'{"text": "hi",', None),
            (f"truncated-json{route}", route, b'{"model', None),
            (f"json-array{route}", route, b"[1, 2]", None),
            (f"json-scalar{route}", route, b"3", None),
            (f"json-string{route}", route, b'"hello"', None),
            (f"empty-body{route}", route, b"", None),
            (f"invalid-utf8{route}", route, b'{"text": "\xff\xfe hi", "model": "\xc3("}', None),
        ]
    gen = lambda **sp: {"text": "hi", "sampling_params": {"max_new_tokens": 2, **sp}}  # noqa: E731
    cases += [
        ("gen-temperature-str", GENERATE, gen(temperature="hot"), "temperature"),
        ("gen-max_new_tokens-str", GENERATE, gen(max_new_tokens="10"), "max_new_tokens"),
        ("gen-max_new_tokens-bool", GENERATE, gen(max_new_tokens=True), "max_new_tokens"),
        ("gen-sampling_params-not-object", GENERATE, {"text": "hi", "sampling_params": 5}, "sampling_params"),
        ("gen-unknown-sampling-param", GENERATE, gen(temprature=0.5), "temprature"),
        ("gen-text-int", GENERATE, {"text": 5}, "text"),
        ("gen-text-and-ids", GENERATE, {"text": "hi", "input_ids": [1, 2]}, "text"),
        ("gen-no-input", GENERATE, {"sampling_params": {"max_new_tokens": 2}}, "text"),
        ("gen-stream-str", GENERATE, {"text": "hi", "stream": "yes"}, "stream"),
        ("gen-return_logprob-str", GENERATE, {"text": "hi", "return_logprob": "true"}, "return_logprob"),
        ("gen-input_ids-strings", GENERATE, {"input_ids": ["1", "2"]}, "input_ids"),
        ("gen-input_ids-floats", GENERATE, {"input_ids": [1.5, 2]}, "input_ids"),
        ("chat-temperature-str", CHAT, _chat(model, temperature="hot"), "temperature"),
        ("chat-max_tokens-str", CHAT, _chat(model, max_tokens="10"), "max_tokens"),
        ("cmpl-temperature-str", COMPLETIONS, _completion(model, temperature="hot"), "temperature"),
        ("cmpl-max_tokens-str", COMPLETIONS, _completion(model, max_tokens="10"), "max_tokens"),
        ("chat-messages-not-list", CHAT, {"model": model, "messages": "hi"}, "messages"),
        (
            "chat-bad-role",
            CHAT,
            {"model": model, "messages": [{"role": "wizard", "content": "hi"}]},
            "messages[0].role",
        ),
        ("update-weights-no-path", "/update_weights", {}, "model_path"),
        ("update-weights-path-int", "/update_weights", {"model_path": 3}, "model_path"),
        ("abort-rid-int", "/abort_request", {"rid": 3}, "rid"),
        ("abort-abort_all-str", "/abort_request", {"abort_all": "yes"}, "abort_all"),
    ]
    out_of_range = [
        ("temperature", -1),
        ("top_p", 0),
        ("top_p", 1.5),
        ("top_k", 0),
        ("min_p", 2),
        ("repetition_penalty", 0),
        ("frequency_penalty", 5),
        ("presence_penalty", -3),
        ("n", 0),
        ("n", 100000),
    ]
    for name, value in out_of_range:
        cases.append((f"gen-{name}={value}", GENERATE, gen(**{name: value}), name))
        cases.append((f"cmpl-{name}={value}", COMPLETIONS, _completion(model, **{name: value}), name))
        cases.append((f"chat-{name}={value}", CHAT, _chat(model, **{name: value}), name))
    cases += [
        ("gen-empty-text", GENERATE, {"text": ""}, "text"),
        ("gen-empty-text-batch", GENERATE, {"text": []}, "text"),
        ("gen-empty-input_ids", GENERATE, {"input_ids": []}, "input_ids"),
        ("cmpl-empty-prompt", COMPLETIONS, _completion(model, prompt=""), "prompt"),
        ("cmpl-empty-prompt-list", COMPLETIONS, _completion(model, prompt=[]), "prompt"),
        ("chat-empty-messages", CHAT, {"model": model, "messages": []}, "messages"),
        ("gen-input-fills-context", GENERATE, {"input_ids": [5] * context_len}, "input_ids"),
        (
            "gen-input-plus-output-overflows",
            GENERATE,
            {"input_ids": [5] * (context_len - 4), "sampling_params": {"max_new_tokens": 10}},
            "max_new_tokens",
        ),
        ("cmpl-max_tokens-huge", COMPLETIONS, _completion(model, max_tokens=10**9), "max_tokens"),
        ("chat-max_tokens-huge", CHAT, _chat(model, max_tokens=10**9), "max_tokens"),
        ("chat-unknown-model", CHAT, _chat("no-such-model"), "model"),
        ("cmpl-unknown-model", COMPLETIONS, _completion("no-such-model"), "model"),
        ("gen-negative-id", GENERATE, {"input_ids": [1, -5]}, "input_ids"),
        ("gen-oov-id", GENERATE, {"input_ids": [1, 10**6]}, "input_ids"),
        ("gen-batch-oov-id", GENERATE, {"input_ids": [[1, 2], [1, 10**6]]}, "input_ids"),
        ("cmpl-negative-id", COMPLETIONS, _completion(model, prompt=[1, -5]), "prompt"),
        ("cmpl-oov-id", COMPLETIONS, _completion(model, prompt=[1, 10**6]), "prompt"),
        ("gen-surrogate", GENERATE, b'{"text": "' + SURROGATE_IN_STRING + b' hi"}', "text"),
        (
            "cmpl-surrogate",
            COMPLETIONS,
            b'{"model": "' + model.encode() + b'", "prompt": "a' + SURROGATE_IN_STRING + b'"}',
            "prompt",
        ),
        (
            "chat-surrogate",
            CHAT,
            b'{"model": "' + model.encode() + b'", "messages": [{"role": "user", '
            b'"content": "' + SURROGATE_IN_STRING + b'"}]}',
            "messages",
        ),
        (
            "gen-surrogate-stop",
            GENERATE,
            b'{"text": "hi", "sampling_params": {"stop": "\\udfff"}}',
            "sampling_params",
        ),
    ]
    return cases


CASE_IDS = [case[0] for case in body_cases("m", 8)]


def assert_error_body(response: requests.Response, status: int, param: str | None) -> dict:
    """An OpenAI-style error (exact keys) with ``status`` and ``param``; returns the ``error`` object."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body.keys() == {"error"}
    error = body["error"]
    assert error.keys() == ERROR_KEYS
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    return error


def post(base_url: str, route: str, body: Any) -> requests.Response:
    """POST ``body`` (raw bytes as they are, anything else as JSON)."""
    if isinstance(body, bytes):
        return requests.post(base_url + route, data=body, headers={"Content-Type": "application/json"})
    return requests.post(base_url + route, json=body)


def good_generation(base_url: str) -> None:
    """A normal request still works."""
    response = requests.post(
        f"{base_url}/generate",
        # ignore_eos: a sampled EOS as the first token would end the request after one token
        json={"text": "hi", "sampling_params": {"max_new_tokens": 2, "ignore_eos": True}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["meta_info"]["completion_tokens"] == 2


@pytest.fixture(scope="module")
def context_len(server) -> int:
    return requests.get(f"{server.base_url}/v1/models").json()["data"][0]["max_model_len"]


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_body_is_400_naming_the_param(server, context_len, case_id):
    """One bad body -> 400 + error body with the right ``param``; then a good request succeeds."""
    cases = {case[0]: case for case in body_cases(server.model_path, context_len)}
    _, route, body, param = cases[case_id]
    error = assert_error_body(post(server.base_url, route, body), 400, param)
    if case_id == "chat-max_tokens-huge":  # SGLang's chat check, before the prompt is counted
        assert error["message"] == (
            f"max_tokens is too large: {10**9}. This model supports at most {context_len} completion tokens."
        )
    elif "context" in case_id or "huge" in case_id or "overflows" in case_id:
        assert "context length" in error["message"]
    good_generation(server.base_url)


def test_bad_sampling_value_in_stream_request_is_plain_400(server):
    """Validation happens before the stream starts: a plain 400, not an SSE error event."""
    response = requests.post(
        f"{server.base_url}/generate",
        stream=True,
        json={"text": "hi", "stream": True, "sampling_params": {"temperature": -1}},
    )
    assert_error_body(response, 400, "temperature")
    response = requests.post(
        f"{server.base_url}/v1/chat/completions",
        stream=True,
        json=_chat(server.model_path, stream=True, top_p=0),
    )
    assert_error_body(response, 400, "top_p")


def test_errors_mention_the_openai_names(server):
    """OpenAI routes speak OpenAI parameter names in messages, never SGLang's internal ones."""
    error = assert_error_body(
        post(server.base_url, COMPLETIONS, _completion(server.model_path, max_tokens=10**9)),
        400,
        "max_tokens",
    )
    assert "max_new_tokens" not in error["message"]
    assert error["code"] == "context_length_exceeded"
    error = assert_error_body(post(server.base_url, CHAT, _chat("no-such-model")), 400, "model")
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]


def test_body_too_large_is_413(server):
    """A body over the 64 MiB limit (by Content-Length) is refused before it is read."""
    big = b'{"text": "' + b"a" * ((64 << 20) + 16) + b'"}'
    for route in (GENERATE, CHAT):
        response = requests.post(
            server.base_url + route, data=big, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json()["error"]["code"] == 413
    good_generation(server.base_url)


def test_chunked_body_too_large_is_413(server):
    """The size limit also holds for a chunked upload (no Content-Length)."""

    def chunks():  # left unterminated: if it is read whole, the answer is a quick 400, not a 64 MiB tokenization
        yield b'{"text": "'
        for _ in range(65):
            yield b"a" * (1 << 20)

    response = requests.post(
        f"{server.base_url}/generate", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413


@pytest.mark.parametrize(
    "path",
    [
        "/flush_cache",
        "/update_weights",
        "/update_weights_from_disk",
        "/abort_request",
        "/v1/chat/completions",
        "/v1/completions",
    ],
)
def test_get_on_post_only_routes_is_405(server, path):
    response = requests.get(server.base_url + path)
    assert response.status_code == 405
    body = response.json()
    assert body["error"].keys() == ERROR_KEYS
    assert body["error"]["code"] == 405
    assert "POST" in response.headers["allow"]


def test_unknown_route_is_404(server):
    response = requests.get(f"{server.base_url}/no_such_route")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == 404


def test_server_healthy_after_bad_inputs(server):
    """After everything above: /health is 200, generation and chat still work."""
    assert requests.get(f"{server.base_url}/health").status_code == 200
    assert requests.get(f"{server.base_url}/health_generate").status_code == 200
    good_generation(server.base_url)
    response = requests.post(f"{server.base_url}/v1/chat/completions", json=_chat(server.model_path))
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 2


# ----------------------------------------------------------------------------- bounded work before tokenizing
HUGE_TEXT = "word " * 10_000_000  # 50 MB: tokenizing it whole took a minute and 7.9 GB


def _rss(server) -> int:
    import psutil

    return psutil.Process(server.process.pid).memory_info().rss


@pytest.mark.parametrize(
    ("route", "field", "param"),
    [
        (GENERATE, "text", "text"),
        (GENERATE, "batch", "text"),
        (COMPLETIONS, "prompt", "prompt"),
        (CHAT, "messages", "messages"),
        ("/tokenize", "prompt", "prompt"),
        ("/tokenize", "messages", "messages"),
    ],
)
def test_huge_prompt_is_refused_unread(server, route, field, param):
    """A 50 MB prompt is a 400 on its length in characters, before tokenizing: the HTTP process barely grows."""
    if field == "messages":
        body = {"messages": [{"role": "user", "content": HUGE_TEXT}]}
    elif field == "batch":
        body = {"text": ["hi", HUGE_TEXT]}
    else:
        body = {field: HUGE_TEXT}
    if route in (COMPLETIONS, CHAT):
        body.update(model=server.model_path, max_tokens=2)
    before = _rss(server)
    error = assert_error_body(post(server.base_url, route, body), 400, param)
    assert "characters) is longer than the model's context length" in error["message"]
    assert ("text[1]" in error["message"]) == (field == "batch")
    assert _rss(server) - before < 200 << 20  # bytes; the body itself is 50 MB
    good_generation(server.base_url)


@pytest.mark.parametrize("num_chars", [60_000, 600_000])
def test_prompt_over_the_context_is_refused_in_sglangs_words(server, context_len, num_chars):
    """A prompt over the context: its exact token count (SGLang's message), or past 256 Ki characters a lower
    bound from one window of it ("at least N tokens")."""
    text = ("The capital of France is Paris. " * (num_chars // 32 + 1))[:num_chars]
    count = r"\(\d+ tokens\)" if num_chars < 1 << 18 else r"\(at least \d+ tokens\)"
    expected = re.compile(
        rf"^The input {count} is longer than the model's context length \({context_len} tokens\)\.$"
    )
    for route, body, param in (
        (GENERATE, {"text": text}, "text"),
        (COMPLETIONS, _completion(server.model_path, prompt=text), "prompt"),
        (CHAT, _chat(server.model_path, messages=[{"role": "user", "content": text}]), "messages"),
    ):
        error = assert_error_body(post(server.base_url, route, body), 400, param)
        assert expected.match(error["message"]), error["message"]
        if route != GENERATE:
            assert error["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    ("key", "value"),
    [("padding", "max_length"), ("max_length", 10**7), ("return_tensors", "pt"), ("tokenize", False)],
)
@pytest.mark.parametrize("route", [CHAT, "/tokenize"])
def test_chat_template_kwargs_refuse_tokenizer_arguments(server, route, key, value):
    """Tokenizer arguments never reach apply_chat_template (a 10-million-token prompt, tensors): 400 naming them."""
    body = {"messages": CHAT_MESSAGES, "chat_template_kwargs": {"padding": "max_length", key: value}}
    if route == CHAT:
        body.update(model=server.model_path, max_tokens=2)
    param = "chat_template_kwargs.padding"
    error = assert_error_body(post(server.base_url, route, body), 400, param)
    assert "not a template variable" in error["message"] and server.model_path not in error["message"]
    body["chat_template_kwargs"] = {key: value}
    assert_error_body(post(server.base_url, route, body), 400, f"chat_template_kwargs.{key}")


def test_too_many_inputs_are_refused_at_once(server):
    """More than --max-inputs-per-request (2048) prompts x n: a 400 naming the field and the limit."""
    cases = [
        (GENERATE, {"text": ["hi"] * 10_000, "sampling_params": {"max_new_tokens": 1}}, "text"),
        (GENERATE, {"input_ids": [[5, 6]] * 3000}, "input_ids"),
        (GENERATE, {"text": ["hi"] * 1000, "sampling_params": {"max_new_tokens": 1, "n": 3}}, "n"),
        (COMPLETIONS, _completion(server.model_path, prompt=["hi"] * 3000), "prompt"),
        (COMPLETIONS, _completion(server.model_path, prompt=["hi"] * 1000, n=3), "n"),
        ("/tokenize", {"prompt": ["hi"] * 3000}, "prompt"),
    ]
    for route, body, param in cases:
        error = assert_error_body(post(server.base_url, route, body), 400, param)
        assert "at most 2048" in error["message"], error
    good_generation(server.base_url)


def test_echo_skips_special_tokens(server):
    """echo returns the prompt as SGLang does: token prompts decoded without special tokens (no BOS ``<s>``)."""
    tok = requests.get(f"{server.base_url}/tokenizer_info").json()
    ids = requests.post(f"{server.base_url}/tokenize", json={"prompt": "The capital of France"}).json()[
        "tokens"
    ]
    assert ids[0] == tok["bos_token_id"]  # the tiny tokenizer adds <s>
    for prompt in (ids, "The capital of France", [ids, ids]):
        response = requests.post(
            f"{server.base_url}/v1/completions",
            json=_completion(server.model_path, prompt=prompt, echo=True, max_tokens=1),
        )
        assert response.status_code == 200, response.text
        for choice in response.json()["choices"]:
            assert choice["text"].startswith("The capital of France"), choice["text"]
