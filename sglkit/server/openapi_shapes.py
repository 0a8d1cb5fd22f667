"""Fixed shapes of the OpenAPI document (HTTP edge, documentation only; used by ``openapi_schema``).

- the JSON schemas of answers that have no pydantic model (the error body, /generate's and /encode's outputs, ...);
- ``refine_request_schemas``: what the body models' generated schemas cannot say by themselves, added to them:
  the ranges ``SamplingParams.verify`` enforces, /generate's ``sampling_params`` fields (``SamplingParams``), and
  /generate refusing fields it does not know. A client or fuzzer reading the document then sends mostly valid
  requests; the server still checks everything itself.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from pydantic import TypeAdapter

from sglkit.core.sampling_params import MAX_N, SamplingParams

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI-style error body (every error answer, and the in-band error event of a stream).",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {
                    "type": "string",
                    "description": "invalid_request_error (4xx) or server_error (5xx).",
                },
                "param": {"type": ["string", "null"], "description": "The request field at fault, if any."},
                "code": {"type": ["integer", "string", "null"], "description": "The status or a named code."},
            },
        }
    },
}
"""The OpenAI-style error body: ``{"error": {"message", "type", "param", "code"}}``."""
OBJECT = {"type": "object"}
"""Any JSON object."""
INT_LIST = {"type": "array", "items": {"type": "integer"}}
"""A list of integers."""
SUCCESS_MESSAGE = {
    "type": "object",
    "required": ["success", "message"],
    "properties": {"success": {"type": "boolean"}, "message": {"type": "string"}},
}
"""``{"success", "message"}`` (/update_weights, /abort_request)."""
GENERATE_OUTPUT = {
    "type": "object",
    "required": ["output_ids", "meta_info"],
    "properties": {
        "text": {"type": "string"},
        "output_ids": INT_LIST,
        "meta_info": {"type": "object", "description": "id, finish_reason, token counts, logprobs, ..."},
        "index": {"type": "integer", "description": "Position in the batch (batch or n > 1 only)."},
    },
}
"""One /generate answer (per input of a batch)."""
EMBEDDING_OUTPUT = {
    "type": "object",
    "required": ["embedding", "meta_info"],
    "properties": {"embedding": {"type": "array", "items": {"type": "number"}}, "meta_info": OBJECT},
}
"""One /encode or /classify answer (per input of a batch)."""
OPENAI_EMBEDDINGS = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "embedding"],
                "properties": {
                    "object": {"const": "embedding"},
                    "index": {"type": "integer"},
                    "embedding": {
                        "anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}],
                        "description": "Floats, or base64 little-endian float32 with encoding_format=base64.",
                    },
                },
            },
        },
        "model": {"type": "string"},
        "usage": OBJECT,
    },
}
"""The /v1/embeddings answer."""
FUNCTION_CALLS = {
    "type": "object",
    "required": ["normal_text", "calls"],
    "properties": {
        "normal_text": {"type": "string"},
        "calls": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "tool_index": {"type": "integer"},
                    "name": {"type": "string"},
                    "parameters": {"type": "string", "description": "The arguments, a JSON string."},
                },
            },
        },
    },
}
"""The /parse_function_call answer."""
REASONING_SPLIT = {
    "type": "object",
    "required": ["text", "reasoning_text"],
    "properties": {"text": {"type": "string"}, "reasoning_text": {"type": "string"}},
}
"""The /separate_reasoning answer."""
MODEL_INFO = {
    "type": "object",
    "required": ["model_path", "is_generation"],
    "properties": {"model_path": {"type": "string"}, "is_generation": {"type": "boolean"}},
}
"""The /get_model_info answer."""

SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A JSON chunk (the route's answer shape, with the new text), an error body "
            '(``{"error": ...}``, after which the stream ends), or ``[DONE]``, always last.',
        },
        "event": {"type": "string"},
    },
}
"""One server-sent event of a streamed answer (``text/event-stream``)."""


def one_or_many(item: dict[str, Any]) -> dict[str, Any]:
    """One answer for one input, a list of them for a batch."""
    return {"anyOf": [item, {"type": "array", "items": item}]}


# ----------------------------------------------------------------------------- request schema refinements
_PENALTY = {"minimum": -2, "maximum": 2}
RANGES: dict[str, dict[str, Any]] = {
    "temperature": {"minimum": 0},
    "top_p": {"exclusiveMinimum": 0, "maximum": 1},
    "min_p": {"minimum": 0, "maximum": 1},
    "frequency_penalty": _PENALTY,
    "presence_penalty": _PENALTY,
    "repetition_penalty": {"exclusiveMinimum": 0, "maximum": 2},
    "max_new_tokens": {"minimum": 0},
    "max_tokens": {"minimum": 0},
    "max_completion_tokens": {"minimum": 0},
    "min_new_tokens": {"minimum": 0},
    "min_tokens": {"minimum": 0},
    "n": {"minimum": 1, "maximum": MAX_N},
}
"""Sampling ranges ``SamplingParams.verify`` enforces, by field name (native and OpenAI names). Added next to a
property's type (JSON Schema applies ``minimum`` to numbers only, so a ``null`` stays allowed)."""
_UNSUPPORTED_SAMPLING = (
    "beam_width",
    "custom_params",
    "watermark",
)  # refused unless unset: left undocumented


def sampling_params_schema() -> dict[str, Any]:
    """The JSON schema of /generate's ``sampling_params``: ``SamplingParams``' fields (unknown keys refused)."""
    schema = TypeAdapter(SamplingParams).json_schema()
    schema.pop("required", None)
    properties = schema["properties"]
    for name in _UNSUPPORTED_SAMPLING:
        properties.pop(name, None)
    for field in fields(SamplingParams):
        prop = properties.get(field.name)
        if prop is None:
            continue
        prop.pop("title", None)
        if "anyOf" not in prop:  # null means "the default" for every field
            prop = {"anyOf": [prop, {"type": "null"}], "default": prop.pop("default", None)}
        properties[field.name] = {**prop, **RANGES.get(field.name, {})}
    schema["additionalProperties"] = False
    return schema


def refine_request_schemas(schemas: dict[str, dict[str, Any]], request_models: set[str]) -> None:
    """Add what pydantic cannot generate to the body models' component schemas, in place (see module doc)."""
    for name in request_models:
        for prop_name, prop in schemas[name].get("properties", {}).items():
            prop.update(RANGES.get(prop_name, {}))
    if "GenerateReqInput" in request_models:
        schemas["SamplingParams"] = sampling_params_schema()
        params = {"$ref": "#/components/schemas/SamplingParams"}
        generate = schemas["GenerateReqInput"]
        generate["properties"]["sampling_params"] = {
            "anyOf": [params, {"type": "array", "items": params}, {"type": "null"}],
            "description": "One set for every input, or one per input of a batch.",
        }
        generate["additionalProperties"] = (
            False  # parse_generate_request refuses fields SGLang does not define
        )


_CHAT = [{"role": "user", "content": "What is the capital of France?"}]
_TEXT = "The capital of France is"
REQUEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "/generate": {"text": _TEXT, "sampling_params": {"temperature": 0, "max_new_tokens": 8}},
    "/v1/chat/completions": {"messages": _CHAT, "max_tokens": 8, "temperature": 0},
    "/v1/completions": {"prompt": _TEXT, "max_tokens": 8, "temperature": 0},
    "/encode": {"text": _TEXT},
    "/classify": {"text": _TEXT},
    "/v1/embeddings": {"input": _TEXT},
    "/tokenize": {"prompt": _TEXT},
    "/v1/tokenize": {"messages": _CHAT},
    "/detokenize": {"tokens": [1, 2, 3]},
    "/v1/detokenize": {"tokens": [[1, 2], [3]]},
    "/parse_function_call": {"text": "Hello", "tool_call_parser": "qwen25", "tools": []},
    "/separate_reasoning": {"text": "<think>Easy.</think>Paris.", "reasoning_parser": "qwen3"},
    "/abort_request": {"rid": "my-request-id"},
    "/update_weights": {"model_path": "/path/to/same-shaped/checkpoint"},
    "/update_weights_from_disk": {"model_path": "/path/to/same-shaped/checkpoint"},
    "/v1/responses": {"input": "What is the capital of France?", "max_output_tokens": 8, "temperature": 0},
    "/v1/score": {
        "query": _TEXT,
        "items": [" Paris", " Rome"],
        "label_token_ids": [1, 2],
        "apply_softmax": True,
    },
    "/v1/rerank": {"query": "capital of France", "documents": ["Paris is in France.", "Rome is in Italy."]},
}
"""One documented request body per route (``example`` of its ``requestBody``): a valid request a client can copy."""
