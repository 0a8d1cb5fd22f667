"""OpenAPI document (HTTP edge, documentation only): FastAPI's ``/openapi.json`` completed with what each route
really reads and answers.

Routes read their raw body and validate it themselves (``protocol.parse_json_object`` then
``protocol.validate_request(Model, ...)``), so FastAPI sees no body parameter and would document none.
``install_openapi(app)`` replaces ``app.openapi`` with a cached builder that, for every operation of ``ROUTES``
(one row per path; a path the app does not serve is skipped):

- ``requestBody`` (POST/PUT): the JSON schema of the pydantic model the route validates against;
- ``responses``: the success answer (a response model or a fixed shape; ``text/event-stream`` too where
  ``"stream": true`` streams), and every error status it can give, with the OpenAI-style error body
  ``{"error": {"message", "type", "param", "code"}}``: 400 bad input, 401 without the ``--api-key``, 404 unknown
  ids, 408 / 431 slow or oversized requests, 413 body too large, 503 unavailable (queue full, timeouts, shutting
  down, scheduler gone; with ``Retry-After``), 500 anything unexpected. FastAPI's 422 never happens (it is a 400).

Operation ids are made unique (``generate_post`` and ``generate_put``), and with ``--api-key`` the routes that need
it carry a bearer ``security`` requirement.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from sglkit.server.openapi_shapes import (
    EMBEDDING_OUTPUT,
    ERROR_SCHEMA,
    FUNCTION_CALLS,
    GENERATE_OUTPUT,
    MODEL_INFO,
    OBJECT,
    OPENAI_EMBEDDINGS,
    REASONING_SPLIT,
    REQUEST_EXAMPLES,
    SSE_EVENT,
    SUCCESS_MESSAGE,
    one_or_many,
    refine_request_schemas,
)

JSON, SSE, TEXT = "application/json", "text/event-stream", "text/plain"
BODY_METHODS = ("post", "put")
ModelRef = type[BaseModel] | str
"""A pydantic model, or ``"module:Class"`` for one imported when the document is built."""


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class RouteDoc:
    """How one path is documented: the body model, the success answer, and the errors the route itself gives.

    Every operation also documents 500, 408 and 431 (and 413 with a body, 400 with a body model, 401 with
    --api-key). ``ok`` is a JSON schema or a response model; ``ok_media`` its media type (None: no body).
    """

    body: ModelRef | None = None
    ok: dict[str, Any] | ModelRef | None = None
    ok_media: str | None = JSON
    stream: bool = False
    errors: tuple[int, ...] = ()
    error_schemas: tuple[tuple[int, str, dict[str, Any]], ...] = ()  # (status, media, schema): other shapes


_P = "sglkit.server.protocol:"
ROUTES: dict[str, RouteDoc] = {
    # Native API (native_api.py).
    "/generate": RouteDoc(
        "sglkit.server.generate_request:GenerateReqInput",
        one_or_many(GENERATE_OUTPUT),
        stream=True,
        errors=(503,),
    ),
    "/health": RouteDoc(ok_media=None, errors=(503,)),  # empty body, as SGLang's
    "/health_generate": RouteDoc(ok_media=None, errors=(503,)),
    "/get_model_info": RouteDoc(ok=MODEL_INFO),
    "/model_info": RouteDoc(ok=MODEL_INFO),
    "/get_server_args": RouteDoc(ok=OBJECT),
    "/get_server_info": RouteDoc(ok=OBJECT, errors=(503,)),
    "/server_info": RouteDoc(ok=OBJECT, errors=(503,)),
    "/get_memory_pool_size": RouteDoc(ok={"type": "integer"}),
    "/flush_cache": RouteDoc(
        ok={"type": "string"},
        ok_media=TEXT,
        errors=(503,),
        error_schemas=((400, TEXT, {"type": "string", "description": "Why the cache was not flushed."}),),
    ),
    "/update_weights": RouteDoc(
        "sglkit.server.native_api:UpdateWeightsReqInput",
        SUCCESS_MESSAGE,
        errors=(503,),
        error_schemas=((400, JSON, SUCCESS_MESSAGE),),
    ),
    "/update_weights_from_disk": RouteDoc(
        "sglkit.server.native_api:UpdateWeightsReqInput",
        SUCCESS_MESSAGE,
        errors=(503,),
        error_schemas=((400, JSON, SUCCESS_MESSAGE),),
    ),
    "/abort_request": RouteDoc("sglkit.server.native_api:AbortReqInput", SUCCESS_MESSAGE, errors=(404,)),
    "/metrics": RouteDoc(ok={"type": "string"}, ok_media=TEXT, errors=(404, 503)),
    # OpenAI API (openai_api.py).
    "/v1/models": RouteDoc(ok=_P + "ModelList"),
    "/v1/models/{model_id}": RouteDoc(ok=_P + "ModelCard", errors=(404,)),
    "/v1/chat/completions": RouteDoc(
        _P + "ChatCompletionRequest", _P + "ChatCompletionResponse", stream=True, errors=(503,)
    ),
    "/v1/completions": RouteDoc(
        _P + "CompletionRequest", _P + "CompletionResponse", stream=True, errors=(503,)
    ),
    # Embeddings (embeddings_api.py).
    "/encode": RouteDoc(
        "sglkit.server.embeddings_api:EncodeReqInput", one_or_many(EMBEDDING_OUTPUT), errors=(503,)
    ),
    "/classify": RouteDoc(
        "sglkit.server.embeddings_api:EncodeReqInput", one_or_many(EMBEDDING_OUTPUT), errors=(503,)
    ),
    "/v1/embeddings": RouteDoc(
        "sglkit.server.embeddings_api:EmbeddingRequest", OPENAI_EMBEDDINGS, errors=(503,)
    ),
    # Parsers (parser_api.py) and tokenizer (tokenize_api.py): no model run, no scheduler.
    "/parse_function_call": RouteDoc("sglkit.server.parser_api:ParseFunctionCallReq", FUNCTION_CALLS),
    "/separate_reasoning": RouteDoc("sglkit.server.parser_api:SeparateReasoningReqInput", REASONING_SPLIT),
    "/tokenize": RouteDoc(
        "sglkit.server.tokenize_api:TokenizeRequest", "sglkit.server.tokenize_api:TokenizeResponse"
    ),
    "/v1/tokenize": RouteDoc(
        "sglkit.server.tokenize_api:TokenizeRequest", "sglkit.server.tokenize_api:TokenizeResponse"
    ),
    "/detokenize": RouteDoc(
        "sglkit.server.tokenize_api:DetokenizeRequest", "sglkit.server.tokenize_api:DetokenizeResponse"
    ),
    "/v1/detokenize": RouteDoc(
        "sglkit.server.tokenize_api:DetokenizeRequest", "sglkit.server.tokenize_api:DetokenizeResponse"
    ),
    "/tokenizer_info": RouteDoc(ok=OBJECT),
    "/v1/tokenizer_info": RouteDoc(ok=OBJECT),
    # Responses API (responses_api.py; stored responses by id), scoring (score_api.py) and reranking (rerank_api.py).
    "/v1/responses": RouteDoc(
        "sglkit.server.responses_protocol:ResponsesRequest", OBJECT, stream=True, errors=(503,)
    ),
    "/v1/responses/{response_id}": RouteDoc(ok=OBJECT, errors=(404,)),
    "/v1/responses/{response_id}/cancel": RouteDoc(ok=OBJECT, errors=(400, 404)),
    "/v1/responses/{response_id}/input_items": RouteDoc(ok=OBJECT, errors=(400, 404)),
    "/v1/score": RouteDoc("sglkit.server.score_api:ScoringRequest", OBJECT, errors=(503,)),
    "/v1/rerank": RouteDoc(
        "sglkit.server.rerank_api:RerankRequest", {"type": "array", "items": OBJECT}, errors=(503,)
    ),
}
"""Path -> its documentation. A new route: one row here (its body model is the one it passes to
``validate_request``). A served path missing from the table keeps FastAPI's bare documentation, plus the errors."""


# ----------------------------------------------------------------------------- building the document
def resolve_model(ref: ModelRef) -> type[BaseModel]:
    """``"module:Class"`` -> the class (models given directly are returned as they are)."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _model_refs(docs: Iterable[RouteDoc]) -> tuple[dict[tuple[type[BaseModel], str], str], dict[str, Any]]:
    """Every model of ``docs`` -> the ``$ref`` of its schema (validation mode for bodies, serialization mode for
    answers), and the schemas to put in ``components.schemas``."""
    wanted: list[tuple[type[BaseModel], str]] = []
    for doc in docs:
        if doc.body is not None:
            wanted.append((resolve_model(doc.body), "validation"))
        if doc.ok is not None and not isinstance(doc.ok, dict):
            wanted.append((resolve_model(doc.ok), "serialization"))
    wanted = list(dict.fromkeys(wanted))
    if not wanted:
        return {}, {}
    mapping, defs = models_json_schema(wanted, ref_template="#/components/schemas/{model}")
    return {key: schema["$ref"] for key, schema in mapping.items()}, defs.get("$defs", {})


def _json_content(schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {media: {"schema": schema}}


_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}
}
ERROR_DESCRIPTIONS = {
    400: "Bad input: malformed JSON, a wrong type or value (``param`` names the field).",
    401: "Missing or wrong API key (``Authorization: Bearer <key>``).",
    404: "Unknown id or name, or a feature that is off.",
    408: "The client sent its request too slowly.",
    413: "Request body too large.",
    431: "Request headers too large.",
    500: "Unexpected server error.",
    503: "Unavailable: queue full, request timed out, shutting down, or the scheduler process is gone.",
}


def _responses(doc: RouteDoc, method: str, refs: dict, needs_key: bool) -> dict[str, Any]:
    """The ``responses`` object of one operation of ``doc``."""
    ok: dict[str, Any] = {"description": "Success."}
    if doc.ok_media is not None:
        schema = doc.ok if isinstance(doc.ok, dict) else None
        if doc.ok is not None and schema is None:
            schema = {"$ref": refs[(resolve_model(doc.ok), "serialization")]}
        ok["content"] = _json_content(schema or {}, doc.ok_media)
    if doc.stream:
        ok["description"] = 'Success; with "stream": true, server-sent events ending in "data: [DONE]".'
        ok.setdefault("content", {})[SSE] = {"schema": SSE_EVENT}
    statuses = {408, 431, 500, *doc.errors}
    if method in BODY_METHODS:
        statuses.add(413)
    if method in BODY_METHODS and doc.body is not None:
        statuses.add(400)
    if needs_key:
        statuses.add(401)
    out: dict[str, Any] = {"200": ok}
    for status in sorted(statuses):
        entry: dict[str, Any] = {
            "description": ERROR_DESCRIPTIONS.get(status, "Error."),
            "content": _json_content(_ERROR_REF),
        }
        if status == 503:
            entry["headers"] = copy.deepcopy(_RETRY_AFTER)
        out[str(status)] = entry
    for status, media, schema in doc.error_schemas:
        entry = out.setdefault(str(status), {"description": ERROR_DESCRIPTIONS.get(status, "Error.")})
        content = entry.setdefault("content", {})
        if media in content:
            content[media] = {"schema": {"anyOf": [content[media]["schema"], schema]}}
        else:
            content[media] = {"schema": schema}
    return dict(sorted(out.items()))


def _operation_id(path: str, method: str) -> str:
    name = "".join(c if c.isalnum() else "_" for c in path.strip("/")).strip("_")
    while "__" in name:
        name = name.replace("__", "_")
    return f"{name or 'root'}_{method}"


def complete_openapi(
    spec: dict[str, Any],
    api_key: bool,
    auth_exempt: Iterable[str] = (),
    routes: dict[str, RouteDoc] | None = None,
) -> dict[str, Any]:
    """Fill ``spec`` (FastAPI's document) in place from ``routes`` (default ``ROUTES``) and return it."""
    routes = ROUTES if routes is None else routes
    exempt = set(auth_exempt)
    paths = spec.setdefault("paths", {})
    refs, model_schemas = _model_refs(doc for path, doc in routes.items() if path in paths)
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.update(model_schemas)
    bodies = {refs[(resolve_model(d.body), "validation")] for p, d in routes.items() if p in paths and d.body}
    refine_request_schemas(schemas, {ref.rsplit("/", 1)[1] for ref in bodies})
    schemas["ErrorResponse"] = ERROR_SCHEMA
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    if api_key:
        components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    for path, operations in paths.items():
        doc = routes.get(path, RouteDoc(ok=None))
        needs_key = api_key and path not in exempt
        for method, operation in operations.items():
            operation["operationId"] = _operation_id(path, method)
            if method in BODY_METHODS and doc.body is not None:
                ref = refs[(resolve_model(doc.body), "validation")]
                content = _json_content({"$ref": ref})
                if path in REQUEST_EXAMPLES:
                    content[JSON]["example"] = REQUEST_EXAMPLES[path]
                operation["requestBody"] = {"required": True, "content": content}
            operation["responses"] = _responses(doc, method, refs, needs_key)
            if needs_key:
                operation["security"] = [{"bearerAuth": []}]
    return spec


def install_openapi(app: FastAPI, api_key: bool = False, auth_exempt: Iterable[str] = ()) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) return the completed document, built once."""
    exempt = tuple(auth_exempt)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            with warnings.catch_warnings():  # one function serving POST and PUT: ids made unique below
                warnings.filterwarnings("ignore", message="Duplicate Operation ID")
                spec = get_openapi(
                    title=app.title,
                    version=app.version,
                    openapi_version=app.openapi_version,
                    description=app.description,
                    routes=app.routes,
                )
            app.openapi_schema = complete_openapi(spec, api_key, exempt)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
