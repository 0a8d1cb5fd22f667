"""Embedding routes (HTTP edge -> embedding client): /encode, /classify (SGLang native) and /v1/embeddings (OpenAI).

Served by a model launched with ``--is-embedding``; a generation model answers all three with a 400. Shapes:

- ``/encode`` and ``/classify``: ``{"text": str | [str]}`` or ``{"input_ids": [int] | [[int]]}`` ->
  ``{"embedding": [...], "meta_info": {...}}``, or a list of those for a list. For a reward model the
  ``embedding`` holds its scores (``embedding[0]`` is the reward), as in SGLang.
- ``/v1/embeddings``: OpenAI's request (``input`` as a string, strings, token ids or lists of token ids;
  ``encoding_format`` "float" or "base64") -> ``{"object": "list", "data": [...], "model", "usage"}``.

``dimensions`` (on all three, as SGLang's EmbeddingReqInput): a model whose config.json declares Matryoshka
support (``is_matryoshka: true`` or a ``matryoshka_dimensions`` list, as SGLang and vLLM read it) answers the
first ``dimensions`` values, L2-renormalized when the model normalizes its vectors (SGLang truncates before its
pooler's normalization: the same vector). Other models accept only their own size; every refusal is a 400 naming
``dimensions``.
"""

from __future__ import annotations

import base64
import math
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from sglkit.runtime.frontend.embedding_input import EmbeddingInput
from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.errors import error_response
from sglkit.server.openai_request import model_error
from sglkit.server.protocol import Int, parse_json_object, validate_request
from sglkit.server.tokenizer_manager import ClientDisconnected

router = APIRouter()

CLIENT_CLOSED_REQUEST = 499


class EncodeReqInput(BaseModel):
    """Body of /encode and /classify (SGLang's EmbeddingReqInput, the fields sglkit supports)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    text: str | list[str] | None = None
    input_ids: list[Int] | list[list[Int]] | None = None
    rid: str | list[str] | None = None
    dimensions: Int | None = None


class EmbeddingRequest(BaseModel):
    """Body of /v1/embeddings (OpenAI)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input: str | list[str] | list[Int] | list[list[Int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Int | None = None
    user: str | None = None


def _generation_model_refusal(request: Request, route: str) -> Response | None:
    """The 400 a generation model answers on embedding routes, or None for an embedding model."""
    if request.app.state.server_args.is_embedding:
        return None
    return error_response(
        400,
        f"This model is a generation model; {route} needs an embedding or reward model served with --is-embedding. "
        "Use /generate or /v1/completions instead.",
        "model",
    )


@lru_cache(maxsize=8)
def matryoshka_support(model_path: str) -> tuple[bool, tuple[int, ...], int | None, bool]:
    """(declares Matryoshka, its allowed dimensions (empty: any), hidden size, normalizes its vectors).

    Read from config.json (``is_matryoshka`` / ``matryoshka_dimensions``) and, for normalization, the
    sentence-transformers modules (a ``Normalize`` module) or sglkit's default pooling (normalized, except the
    raw outputs of a sequence-classification head).
    """
    from sglkit.models.loader import load_config
    from sglkit.models.pooling_config import read_pooling_config

    try:
        config = load_config(model_path)
    except (OSError, ValueError):
        return False, (), None, False
    allowed = tuple(int(d) for d in getattr(config, "matryoshka_dimensions", None) or ())
    declared = bool(allowed) or bool(getattr(config, "is_matryoshka", False))
    try:
        pooling = read_pooling_config(model_path)
    except ValueError:
        pooling = None
    architectures = getattr(config, "architectures", None) or []
    if pooling is not None:
        normalizes = pooling.normalize
    else:
        normalizes = not any(a.endswith("ForSequenceClassification") for a in architectures)
    return declared, allowed, getattr(config, "hidden_size", None), normalizes


def check_dimensions(model_path: str, dimensions: int | None) -> None:
    """Refuse (400 naming ``dimensions``) a size a Matryoshka model cannot give, before anything runs."""
    if dimensions is None:
        return
    declared, allowed, hidden_size, _ = matryoshka_support(model_path)
    if not declared:
        return  # other models: checked against the vectors' size (truncate_vectors)
    if dimensions < 1:
        raise InvalidRequestError("Requested dimensions must be greater than 0.", "dimensions")
    if hidden_size is not None and dimensions > hidden_size:
        raise InvalidRequestError(
            f"Provided dimensions are greater than max embedding dimension: {hidden_size}.", "dimensions"
        )
    if allowed and dimensions not in allowed:
        raise InvalidRequestError(
            f"dimensions={dimensions} is not supported: this model's Matryoshka dimensions are {list(allowed)}.",
            "dimensions",
        )


def truncate_vectors(
    model_path: str, vectors: list[list[float]], dimensions: int | None
) -> list[list[float]]:
    """The first ``dimensions`` values of each vector, renormalized when the model normalizes (Matryoshka)."""
    if dimensions is None:
        return vectors
    declared, _, _, normalizes = matryoshka_support(model_path)
    size = len(vectors[0])
    if not declared:
        if dimensions != size:
            raise InvalidRequestError(
                f"dimensions={dimensions} is not supported: this model's embeddings have {size} dimensions and "
                "its config.json does not declare Matryoshka support (is_matryoshka / matryoshka_dimensions).",
                "dimensions",
            )
        return vectors
    out = []
    for vector in vectors:
        head = [float(x) for x in vector[:dimensions]]
        norm = math.sqrt(sum(x * x for x in head)) if normalizes else 0.0
        out.append([x / norm for x in head] if norm > 0 else head)
    return out


async def _native(request: Request, route: str) -> Response:
    refusal = _generation_model_refusal(request, route)
    if refusal is not None:
        return refusal
    obj = validate_request(EncodeReqInput, parse_json_object(await request.body()))
    tm = request.app.state.tokenizer_manager
    check_dimensions(tm.model_path, obj.dimensions)
    inp = EmbeddingInput(text=obj.text, input_ids=obj.input_ids, rid=obj.rid)
    try:
        is_batch, outputs = await tm.encode(inp, request)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    vectors = truncate_vectors(tm.model_path, [out.embedding for out in outputs], obj.dimensions)
    results = [{"embedding": vector, "meta_info": out.meta_info} for vector, out in zip(vectors, outputs)]
    return JSONResponse(results if is_batch else results[0])


@router.api_route("/encode", methods=["POST", "PUT"])
async def encode(request: Request) -> Response:
    """Embeddings of text or token ids (single or a list)."""
    return await _native(request, "/encode")


@router.api_route("/classify", methods=["POST", "PUT"])
async def classify(request: Request) -> Response:
    """Scores of a reward / classification model (``embedding`` holds them); same input as /encode."""
    return await _native(request, "/classify")


def _openai_input(value: Any) -> EmbeddingInput:
    """OpenAI ``input`` -> EmbeddingInput (always a batch, so every answer is a list)."""
    if isinstance(value, str):
        if not value:
            raise InvalidRequestError("The input text is empty.", "input")
        return EmbeddingInput(text=[value])
    if value and all(isinstance(v, str) for v in value):
        return EmbeddingInput(text=list(value))
    if value and all(isinstance(v, int) for v in value):
        return EmbeddingInput(input_ids=[list(value)])
    if value and all(isinstance(v, list) for v in value):
        return EmbeddingInput(input_ids=list(value))
    if not value:
        raise InvalidRequestError("input must not be empty.", "input")
    raise InvalidRequestError(
        "input must be a string, a list of strings, token ids or lists of token ids.", "input"
    )


def _encode_vector(vector: list[float], encoding_format: str | None) -> list[float] | str:
    """float: the list; base64: little-endian float32 bytes, base64-encoded (what the openai client decodes)."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector


@router.post("/v1/embeddings")
async def openai_embeddings(request: Request) -> Response:
    """OpenAI's embeddings endpoint; the official client's ``embeddings.create`` works against it."""
    refusal = _generation_model_refusal(request, "/v1/embeddings")
    if refusal is not None:
        return refusal
    req = validate_request(EmbeddingRequest, parse_json_object(await request.body()))
    args, tm = request.app.state.server_args, request.app.state.tokenizer_manager
    paths = [p for p in (args.model_path, tm.model_path) if p]
    message = model_error(req.model, args.served_model_name, paths)
    if message:
        return error_response(400, message, "model", code="model_not_found")
    check_dimensions(tm.model_path, req.dimensions)
    inp = _openai_input(req.input)
    try:
        _, outputs = await tm.encode(inp, request, text_param="input", ids_param="input")
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    vectors = truncate_vectors(tm.model_path, [out.embedding for out in outputs], req.dimensions)
    num_tokens = sum(out.meta_info.get("prompt_tokens", 0) for out in outputs)
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(vector, req.encoding_format)}
        for i, vector in enumerate(vectors)
    ]
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": args.served_model_name,
            "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens},
        }
    )
