"""schemathesis against the served /openapi.json (sglkit/server/openapi_schema.py): every documented operation is
fuzzed over real HTTP on the shared server, with valid and invalid bodies drawn from the documented schemas.

Checks: no 5xx (``not_a_server_error``), and the answers conform to the document: documented status
(``status_code_conformance``), media type (``content_type_conformance``) and body schema
(``response_schema_conformance``). Derandomized, with a bounded number of examples per operation.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 12
"""Examples per operation (each generation request is capped to ``MAX_NEW_TOKENS``): the run stays well under
two minutes on two loaded cores."""
MAX_NEW_TOKENS = 4
MAX_CHOICES = 2
MAX_TOKEN_KEYS = {  # OpenAI-style routes -> their max-token fields, first the one that wins when both are set
    "/v1/chat/completions": ("max_completion_tokens", "max_tokens"),
    "/v1/completions": ("max_tokens",),
    "/v1/responses": ("max_output_tokens",),
}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

# Operations left out, and why: each would change the shared server's state for the tests that follow.
EXCLUDED_PATHS = (
    "/update_weights",  # a fuzzed model_path that happens to be a loadable folder would swap the weights
    "/update_weights_from_disk",  # the same route under SGLang's other name
)
# The documented examples that cannot succeed on this server (a generation model, no request in flight).
EMBEDDING_ONLY = (400,)  # "This model is a generation model; /encode needs an embedding ... model"
EXAMPLE_STATUSES = {
    "/encode": EMBEDDING_ONLY,
    "/classify": EMBEDDING_ONLY,
    "/v1/embeddings": EMBEDDING_ONLY,
    "/abort_request": (404,),  # its example rid is not in flight
}
# Not excluded: /flush_cache (only drops the prefix cache, nothing is running), /abort_request (nothing else is in
# flight while this test runs), /health_generate (one token).


def _cap(value: Any, most: int) -> Any:
    """An integer above ``most`` becomes ``most``; anything else (a wrong type the server must refuse) stays."""
    if isinstance(value, int) and not isinstance(value, bool) and value > most:
        return most
    return value


def _bound_sampling_params(params: Any) -> Any:
    """/generate's ``sampling_params``: a few new tokens at most (128 by default), one or two samples."""
    if params is None:
        return {"max_new_tokens": MAX_NEW_TOKENS}
    if isinstance(params, list):
        return [_bound_sampling_params(p) for p in params]
    if isinstance(params, dict):
        params = {
            **params,
            "max_new_tokens": _cap(params.get("max_new_tokens", MAX_NEW_TOKENS), MAX_NEW_TOKENS),
        }
        for key in ("min_new_tokens", "n"):
            if key in params:
                params[key] = _cap(params[key], MAX_CHOICES)
    return params


def bound_generation(path: str, body: Any) -> Any:
    """Cap the work a fuzzed body asks for (max tokens, samples), so that a drawn max_tokens of 10**9 or a chat
    without max_tokens (all the context) takes milliseconds; every other value, valid or not, is left as drawn."""
    if not isinstance(body, dict):
        return body
    body = dict(body)
    if path == "/generate":
        body["sampling_params"] = _bound_sampling_params(body.get("sampling_params"))
    elif path in MAX_TOKEN_KEYS:
        keys = MAX_TOKEN_KEYS[path]
        set_key = next((k for k in keys if body.get(k) is not None), keys[-1])
        body[set_key] = _cap(body.get(set_key, MAX_NEW_TOKENS), MAX_NEW_TOKENS)
        for key in ("n", "best_of", "min_tokens"):
            if key in body:
                body[key] = _cap(body[key], MAX_CHOICES)
    return body


@pytest.fixture(scope="module")
def api_schema(server):
    """The served document, without the state-changing routes (``EXCLUDED_PATHS``)."""
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    schema.config.update(base_url=server.base_url, request_timeout=60)
    return schema.exclude(path=list(EXCLUDED_PATHS))


def documented_example(spec: dict, operation) -> Any:
    """The ``example`` body the document gives ``operation`` (None without one)."""
    body = spec["paths"][operation.path][operation.method.lower()].get("requestBody", {})
    return body.get("content", {}).get("application/json", {}).get("example")


def fuzz_operation(operation, example: Any) -> None:
    """The documented example (if any), then ``MAX_EXAMPLES`` valid and invalid requests drawn from the schema;
    raise on the first broken check."""
    if example is not None:
        response = operation.Case(body=example, media_type="application/json").call_and_validate(
            checks=CHECKS
        )
        assert response.status_code in EXAMPLE_STATUSES.get(operation.path, (200,)), response.text
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        if isinstance(case.body, dict):
            case.body = bound_generation(operation.path, case.body)
        case.call_and_validate(checks=CHECKS)

    run()


def test_documented_operations_hold_their_contract(api_schema, server):
    """Every documented operation, fuzzed: no 5xx, and a documented status, media type and body each time.

    The pytest plugin of schemathesis (``from_fixture``) does not run under pytest 9 (it reads ``node._nodeid``),
    so the operations are driven with hypothesis directly; a failure names the operation and the request."""
    spec = requests.get(f"{server.base_url}/openapi.json", timeout=30).json()
    failures, labels = [], []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)
        try:
            fuzz_operation(operation, documented_example(spec, operation))
        except BaseException as e:  # noqa: BLE001 - schemathesis raises groups: one report for every operation
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            failures.append(f"{operation.label}: {e}")
    assert len(labels) >= 25, labels
    assert not failures, "\n\n".join(failures)


def test_document_covers_bodies_and_errors(server):
    """The document itself: every POST/PUT with a body model has a requestBody; every operation lists its errors
    with the OpenAI-style error schema; FastAPI's 422 is gone; operation ids are unique."""
    spec = requests.get(f"{server.base_url}/openapi.json", timeout=30).json()
    operation_ids = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            operation_ids.append(operation["operationId"])
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert {"200", "500"} <= set(responses), (method, path)
            error = responses["500"]["content"]["application/json"]["schema"]
            assert error == {"$ref": "#/components/schemas/ErrorResponse"}
            if method in ("post", "put") and "requestBody" in operation:
                assert "400" in responses and "413" in responses, (method, path)
    assert len(operation_ids) == len(set(operation_ids))
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ChatCompletionRequest")
    assert "messages" in spec["components"]["schemas"]["ChatCompletionRequest"]["required"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "Retry-After" in chat["responses"]["503"]["headers"]
    for path in ("/generate", "/v1/completions", "/v1/embeddings", "/tokenize", "/abort_request"):
        operation = spec["paths"][path]["post"]
        assert "requestBody" in operation, path
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert set(error["properties"]["error"]["required"]) == {"message", "type", "param", "code"}
