"""Rerank route (HTTP edge -> tokenizer manager): SGLang's ``/v1/rerank`` (POST or PUT).

``{"query", "documents", "top_n", "return_documents", "instruct", "model"}`` -> a JSON list of
``{"score", "document", "index", "meta_info"}``, highest score first (``document`` only with
``return_documents``, the default; ``top_n`` keeps the best ``top_n``). Two ways to score a document:

- **Cross-encoders** (``--is-embedding`` with a sequence-classification head of one label): the pair is tokenized
  as the tokenizer joins two texts (``tokenizer(query, document)``) and the head's output is the score;
  ``meta_info`` is the pass's (``prompt_tokens`` ...).
- **Generation models**, as Qwen3-Reranker is used: the prompt asks for a "yes" or "no" judgement
  (``rerank_prompt``) and the score is P(yes) / (P(yes) + P(no)), where P(x) is the probability that the model
  continues the prompt with the text x (the product over x's tokens: one prefill of prompt + x, reading the
  logprobs of x's tokens; for Qwen3-Reranker "yes" and "no" are one token each). ``meta_info`` is null.

Any other model (an embedder without a head, a classifier with several labels) is a 400 naming ``model``.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from sglkit.runtime.frontend.embedding_input import EmbeddingInput
from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError
from sglkit.server.protocol import Bool, Int, parse_json_object, validate_request
from sglkit.server.score_api import check_fields, check_model, classifier_num_labels, run_prefills
from sglkit.server.tokenizer_manager import ClientDisconnected

router = APIRouter()

CLIENT_CLOSED_REQUEST = 499
DEFAULT_INSTRUCT = "Given a web search query, retrieve relevant passages that answer the query"
# Qwen3-Reranker's prompt (its model card), the one used when the chat template is not a reranker template.
PROMPT_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
LABELS = ("yes", "no")


class RerankRequest(BaseModel):
    """Body of /v1/rerank (SGLang's V1RerankReqInput, text only, plus the served ``model``)."""

    model_config = ConfigDict(extra="ignore")  # check_fields refused every unknown field
    query: str | list[Any]  # content-part lists (SGLang's multimodal form) are refused by _check
    documents: list[str | list[Any]]
    instruct: str | None = None
    top_n: Int | None = None
    return_documents: Bool = True
    model: str | None = None


def is_reranker_template(chat_template: Any) -> bool:
    """True for a Qwen3-Reranker chat template (SGLang's test: it says the answer can only be "yes" or "no")."""
    if not isinstance(chat_template, str):
        return False
    t = chat_template.lower()
    return 'answer can only be "yes" or "no"' in t or (
        "answer can only be" in t and '"yes"' in t and '"no"' in t
    )


def rerank_prompt(tokenizer, query: str, document: str, instruct: str | None) -> str:
    """The judgement prompt: the tokenizer's reranker chat template when it has one (rendered with the query and
    the document as two user messages, and ``instruct`` when given), else Qwen3-Reranker's own prompt."""
    if is_reranker_template(getattr(tokenizer, "chat_template", None)):
        messages = [{"role": "user", "content": query}, {"role": "user", "content": document}]
        extra = {"instruct": instruct} if instruct else {}
        return tokenizer.apply_chat_template(messages, tokenize=False, **extra)
    body = f"<Instruct>: {instruct or DEFAULT_INSTRUCT}\n<Query>: {query}\n<Document>: {document}"
    return PROMPT_PREFIX + body + PROMPT_SUFFIX


def _check(req: RerankRequest, max_inputs: int) -> None:
    text_only = "sglkit's /v1/rerank is text only (content-part lists are not supported); send a string."
    if not isinstance(req.query, str):
        raise InvalidRequestError(f"query: {text_only}", "query")
    if not req.query.strip():
        raise InvalidRequestError("Query cannot be empty or whitespace only.", "query")
    if not req.documents:
        raise InvalidRequestError("Documents cannot be empty.", "documents")
    if len(req.documents) > max_inputs:
        raise InvalidRequestError(
            f"documents has {len(req.documents)} entries; at most {max_inputs} are allowed per request "
            "(--max-inputs-per-request).",
            "documents",
        )
    for i, doc in enumerate(req.documents):
        if not isinstance(doc, str):
            raise InvalidRequestError(f"documents[{i}]: {text_only}", "documents")
        if not doc.strip():
            raise InvalidRequestError(f"documents[{i}] cannot be empty or whitespace only.", "documents")
    if req.top_n is not None and req.top_n < 1:
        raise InvalidRequestError("top_n must be at least 1.", "top_n")


async def _cross_encoder_scores(request: Request, req: RerankRequest) -> list[tuple[float, Any]] | None:
    tm = request.app.state.tokenizer_manager
    if tm.tokenizer is None:
        raise InvalidRequestError("/v1/rerank needs the tokenizer (not --skip-tokenizer-init).", "query")
    pairs = [[req.query, doc] for doc in req.documents]
    ids = await asyncio.to_thread(lambda: tm.tokenizer(pairs)["input_ids"])
    try:
        _, outputs = await tm.encode(EmbeddingInput(input_ids=ids), request, ids_param="documents")
    except ClientDisconnected:
        return None
    return [(float(out.embedding[0]), out.meta_info) for out in outputs]


async def _generation_scores(request: Request, req: RerankRequest) -> list[tuple[float, Any]] | None:
    tm = request.app.state.tokenizer_manager
    tokenizer = tm.tokenizer
    if tokenizer is None:
        raise InvalidRequestError("/v1/rerank needs the tokenizer (not --skip-tokenizer-init).", "query")

    def tokenize() -> tuple[list[list[int]], list[int]]:
        label_ids = [tokenizer.encode(label, add_special_tokens=False) for label in LABELS]
        prompts = [
            tokenizer.encode(rerank_prompt(tokenizer, req.query, d, req.instruct)) for d in req.documents
        ]
        inputs = [prompt + label for prompt in prompts for label in label_ids]
        return inputs, [len(prompt) for prompt in prompts for _ in LABELS]

    inputs, starts = await asyncio.to_thread(tokenize)
    inp = GenerateInput(
        input_ids=inputs,
        sampling_params={"max_new_tokens": 0},
        return_logprob=True,
        logprob_start_len=starts,
    )
    finals = await run_prefills(tm, inp, request, "documents")
    if finals is None:
        return None
    # Each final's input_token_logprobs score the tokens from its logprob_start_len on: exactly the label's.
    label_logprobs = [
        sum(entry[0] for entry in chunk["meta_info"]["input_token_logprobs"]) for chunk in finals
    ]
    return [(yes_probability(yes, no), None) for yes, no in zip(label_logprobs[0::2], label_logprobs[1::2])]


def yes_probability(yes_logprob: float, no_logprob: float) -> float:
    """P(yes) / (P(yes) + P(no)) from the two log-probabilities (a numerically stable sigmoid)."""
    diff = yes_logprob - no_logprob
    if diff >= 0:
        return 1.0 / (1.0 + math.exp(-diff))
    return math.exp(diff) / (1.0 + math.exp(diff))


@router.api_route("/v1/rerank", methods=["POST", "PUT"])
async def v1_rerank(request: Request) -> Response:
    """Documents sorted by relevance to the query (a cross-encoder's head or a generation model's yes/no)."""
    body = parse_json_object(await request.body())
    check_fields(body, RerankRequest, {})
    req = validate_request(RerankRequest, body)
    check_model(request, req.model)
    args = request.app.state.server_args
    _check(req, args.max_inputs_per_request)
    if not args.is_embedding:
        scored = await _generation_scores(request, req)
    elif classifier_num_labels(request.app.state.tokenizer_manager.model_path) == 1:
        scored = await _cross_encoder_scores(request, req)
    else:
        raise InvalidRequestError(
            "/v1/rerank needs a cross-encoder (a sequence-classification model with one label, served with "
            "--is-embedding) or a generation model; this embedding model is neither.",
            "model",
        )
    if scored is None:  # the client went away; nobody reads this
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    results = []
    for index, (score, meta_info) in enumerate(scored):
        result: dict[str, Any] = {"score": score}
        if req.return_documents:
            result["document"] = req.documents[index]
        results.append({**result, "index": index, "meta_info": meta_info})
    results.sort(key=lambda r: r["score"], reverse=True)
    return JSONResponse(results[: req.top_n] if req.top_n is not None else results)
