"""Scoring route (HTTP edge -> tokenizer manager): SGLang's ``/v1/score``, one prefill per item.

``{"query", "items", "label_token_ids", "apply_softmax", "item_first", "temperature", "return_token_logprobs",
"model"}`` -> ``{"scores": [[...], ...], "pooled_hidden_states": null, "token_logprobs", "model", "usage",
"object": "scoring"}``, one row per item, as SGLang answers.

- **Generation models**: each item is joined to the query (``query + item``, or ``item + query`` with
  ``item_first``; strings are joined as text and tokenized once, token ids are concatenated) and prefilled; the
  row holds the probability of each label token at the next position (``exp`` of its logprob, read from the raw
  logits through ``token_ids_logprob``), or with ``apply_softmax`` the softmax of those logprobs over the labels
  (divided by ``temperature``).
- **Sequence-classification models** (``--is-embedding``): the row is the head's outputs for ``query + item``
  (softmaxed with ``apply_softmax``); ``label_token_ids`` is not needed.

Bad input is a 400 naming the field: missing or empty ``items``, more than ``--max-inputs-per-request`` items,
label ids outside the vocabulary, duplicates, text and token ids mixed. SGLang's embedding overrides, setwise
readout and pooled hidden states are refused when set.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from sglkit.runtime.frontend.embedding_input import EmbeddingInput
from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError, validate_input_ids
from sglkit.server.errors import OpenAIError
from sglkit.server.openai_request import model_error
from sglkit.server.protocol import Bool, Float, Int, UsageInfo, parse_json_object, validate_request
from sglkit.server.tokenizer_manager import ClientDisconnected

router = APIRouter()

CLIENT_CLOSED_REQUEST = 499
# SGLang's ScoringRequest fields sglkit does not implement (refused when set, i.e. not null / false).
UNSUPPORTED_FIELDS = {
    "embed_override_token_id": "embedding overrides are not supported",
    "query_embed_overrides": "embedding overrides are not supported",
    "item_embed_overrides": "embedding overrides are not supported",
    "score_extraction_token": "setwise scoring (score_extraction_token) is not supported",
    "return_pooled_hidden_states": "pooled hidden states are not returned",
}


class ScoringRequest(BaseModel):
    """Body of /v1/score (SGLang's ScoringRequest, the fields sglkit implements)."""

    model_config = ConfigDict(extra="ignore")  # check_fields refused every unknown or set unsupported field
    query: str | list[Int] | None = None
    items: str | list[str] | list[list[Int]] | None = None
    label_token_ids: list[Int] | list[list[Int]] | None = None
    apply_softmax: Bool = False
    temperature: Float = 1.0
    return_token_logprobs: Bool = False
    item_first: Bool = False
    model: str | None = None


def check_fields(body: dict[str, Any], model: type[BaseModel], unsupported: dict[str, str]) -> None:
    """400 naming a field the route does not know, or a known-unsupported one that is set."""
    for name, value in body.items():
        if name in model.model_fields:
            continue
        if name in unsupported:
            if value not in (None, False, [], ""):
                raise InvalidRequestError(f"{name} is not supported: {unsupported[name]}.", name)
            continue
        raise InvalidRequestError(f"Unrecognized request argument supplied: {name}", name)


def check_model(request: Request, requested: str | None) -> None:
    """400 (model_not_found) when ``requested`` is not the served model."""
    args, tm = request.app.state.server_args, request.app.state.tokenizer_manager
    message = model_error(
        requested, args.served_model_name, [p for p in (args.model_path, tm.model_path) if p]
    )
    if message:
        raise OpenAIError(400, message, "model", code="model_not_found")


@lru_cache(maxsize=8)
def classifier_num_labels(model_path: str) -> int | None:
    """The number of labels of a ``*ForSequenceClassification`` checkpoint, or None for any other model."""
    from sglkit.models.loader import load_config

    try:
        config = load_config(model_path)
    except (OSError, ValueError):
        return None
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return None
    return int(getattr(config, "num_labels", 1))


def _public(err: InvalidRequestError, param: str) -> InvalidRequestError:
    """A runtime refusal of the joined inputs, renamed to the route's field."""
    renamed = param if err.param in (None, "text", "input_ids") else err.param
    return InvalidRequestError(str(err), renamed)


async def run_prefills(tm, inp: GenerateInput, request: Request, param: str) -> list[dict[str, Any]] | None:
    """Run ``inp`` (non-streaming) and return each request's final chunk; None when the client went away.

    Refusals are 400s naming ``param``; a request that failed answers with its own status.
    """
    inp.stream = False
    try:
        _, reqs, _ = await tm.tokenize(inp)
    except InvalidRequestError as e:
        raise _public(e, param) from None
    for r in reqs:
        if len(r.input_ids) + 1 > tm.max_total_num_tokens:
            raise InvalidRequestError(
                f"The input ({len(r.input_ids)} tokens) does not fit in the KV cache "
                f"({tm.max_total_num_tokens} tokens).",
                param,
            )
    finals: list[dict[str, Any] | None] = [None] * len(reqs)
    async for chunk in tm.run(reqs, request=request):
        finals[chunk["index"]] = chunk
    if any(chunk is None for chunk in finals):
        return None
    for chunk in finals:
        if chunk["error"]:
            raise OpenAIError(chunk["error_status"] or 500, chunk["error"])
    return finals  # type: ignore[return-value]


def _join(req: ScoringRequest, vocab_size: int) -> tuple[list[str] | None, list[list[int]] | None]:
    """The prefilled inputs: (texts, None) or (None, token id lists), one per item, in ``item_first`` order."""
    items = [req.items] if isinstance(req.items, str) else list(req.items or [])
    text_items = all(isinstance(item, str) for item in items)
    query = req.query if req.query is not None else ("" if text_items else [])
    if text_items:
        if not isinstance(query, str):
            raise InvalidRequestError("query must be text when items are text.", "query")
        return [item + query if req.item_first else query + item for item in items], None
    if isinstance(query, str):
        if query:
            raise InvalidRequestError("query must be token ids when items are token ids.", "query")
        query = []
    if query:
        validate_input_ids(query, vocab_size, "query")
    for i, item in enumerate(items):
        if not item:
            raise InvalidRequestError(f"items[{i}] must be a non-empty list of token ids.", "items")
        validate_input_ids(item, vocab_size, "items")
    return None, [list(item) + query if req.item_first else query + list(item) for item in items]


def _label_lists(req: ScoringRequest, num_items: int, vocab_size: int) -> list[list[int]]:
    """``label_token_ids`` as one checked list per item (a shared list is repeated)."""
    labels = req.label_token_ids
    if not labels:
        raise InvalidRequestError(
            "label_token_ids is required for generation models (a non-empty list of token ids).",
            "label_token_ids",
        )
    if isinstance(labels[0], list):
        if len(labels) != num_items:
            raise InvalidRequestError(
                f"label_token_ids has {len(labels)} lists for {num_items} items.", "label_token_ids"
            )
        lists = [list(x) for x in labels]
    else:
        lists = [list(labels)] * num_items
    for ids in lists:
        if not ids:
            raise InvalidRequestError(
                "Each item needs a non-empty list of label token ids.", "label_token_ids"
            )
        for token_id in ids:
            if not 0 <= token_id < vocab_size:
                raise InvalidRequestError(
                    f"Token ID {token_id} is out of vocabulary (vocab size: {vocab_size}).", "label_token_ids"
                )
        if len(set(ids)) != len(ids):
            raise InvalidRequestError("label_token_ids must not contain duplicate tokens.", "label_token_ids")
    return lists


def label_scores(logprobs: list[float], apply_softmax: bool, temperature: float = 1.0) -> list[float]:
    """Label logprobs -> probabilities (``exp``), or their softmax over the labels divided by ``temperature``."""
    if not apply_softmax:
        return [math.exp(x) if x != -math.inf else 0.0 for x in logprobs]
    top = max(logprobs)
    weights = [math.exp((x - top) / temperature) for x in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


async def _score_generation(request: Request, req: ScoringRequest, num_items: int) -> tuple | None:
    tm = request.app.state.tokenizer_manager
    labels = _label_lists(req, num_items, tm.vocab_size)
    texts, ids = _join(req, tm.vocab_size)
    inp = GenerateInput(
        text=texts,
        input_ids=ids,
        sampling_params={"max_new_tokens": 1, "temperature": 0.0},
        return_logprob=True,
        logprob_start_len=-1,
        token_ids_logprob=labels,
    )
    finals = await run_prefills(tm, inp, request, "items")
    if finals is None:
        return None
    scores, token_logprobs, num_tokens = [], [], 0
    for chunk, ids_ in zip(finals, labels):
        meta = chunk["meta_info"]
        num_tokens += meta.get("prompt_tokens", 0)
        by_id = {entry[1]: entry[0] for entry in meta["output_token_ids_logprobs"][0]}
        logprobs = [by_id[token_id] for token_id in ids_]
        scores.append(label_scores(logprobs, req.apply_softmax, req.temperature))
        token_logprobs.append(logprobs)
    return scores, (token_logprobs if req.return_token_logprobs else None), num_tokens


async def _score_classifier(request: Request, req: ScoringRequest) -> tuple | None:
    tm = request.app.state.tokenizer_manager
    if req.return_token_logprobs:
        raise InvalidRequestError(
            "return_token_logprobs is only supported for generation models.", "return_token_logprobs"
        )
    texts, ids = _join(req, tm.vocab_size)
    try:
        _, outputs = await tm.encode(
            EmbeddingInput(text=texts, input_ids=ids), request, text_param="items", ids_param="items"
        )
    except ClientDisconnected:
        return None
    scores = []
    for out in outputs:
        row = [float(x) for x in out.embedding]
        if req.apply_softmax:
            logits = torch.tensor(row, dtype=torch.float64)
            row = torch.softmax((logits - logits.max()) / req.temperature, dim=-1).tolist()
        scores.append(row)
    return scores, None, sum(out.meta_info.get("prompt_tokens", 0) for out in outputs)


@router.post("/v1/score")
async def v1_score(request: Request) -> Response:
    """Probabilities of label tokens after each query+item (generation models), or a classifier's outputs."""
    body = parse_json_object(await request.body())
    check_fields(body, ScoringRequest, UNSUPPORTED_FIELDS)
    req = validate_request(ScoringRequest, body)
    check_model(request, req.model)
    args = request.app.state.server_args
    if req.items is None:
        raise InvalidRequestError("items must be provided.", "items")
    num_items = 1 if isinstance(req.items, str) else len(req.items)
    if num_items == 0:
        raise InvalidRequestError("items must not be empty.", "items")
    if num_items > args.max_inputs_per_request:
        raise InvalidRequestError(
            f"items has {num_items} entries; at most {args.max_inputs_per_request} are allowed per request "
            "(--max-inputs-per-request).",
            "items",
        )
    if not (math.isfinite(req.temperature) and req.temperature > 0):
        raise InvalidRequestError("temperature must be finite and greater than zero.", "temperature")
    if req.temperature != 1.0 and not req.apply_softmax:
        raise InvalidRequestError("temperature requires apply_softmax=true.", "temperature")
    if not args.is_embedding:
        result = await _score_generation(request, req, num_items)
    elif classifier_num_labels(request.app.state.tokenizer_manager.model_path) is not None:
        result = await _score_classifier(request, req)
    else:
        raise InvalidRequestError(
            "/v1/score needs a generation model or a sequence-classification model; this embedding model has "
            "no classification head.",
            "model",
        )
    if result is None:  # the client went away; nobody reads this
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    scores, token_logprobs, num_tokens = result
    return JSONResponse(
        {
            "scores": scores,
            "pooled_hidden_states": None,
            "token_logprobs": token_logprobs,
            "model": args.served_model_name,
            "usage": UsageInfo(prompt_tokens=num_tokens, total_tokens=num_tokens).model_dump(),
            "object": "scoring",
        }
    )
