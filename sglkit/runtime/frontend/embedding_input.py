"""Embedding input processing (front end, before the embedding scheduler): normalize, tokenize, validate.

Shared by ``Engine.encode`` and the HTTP routes (/encode, /classify, /v1/embeddings) so both accept and refuse the
same inputs. Every refusal is an ``InvalidRequestError`` naming the offending field: empty input, an empty or
over-large batch, token ids out of the vocabulary, an input longer than the context.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sglkit.core.messages import TokenizedEmbeddingReq, input_too_long_message
from sglkit.runtime.frontend.input_limits import (
    EXACT_COUNT_CHARS,
    WINDOW_CHARS_PER_TOKEN,
    check_num_inputs,
    encode_bounded,
)
from sglkit.runtime.frontend.input_processor import InvalidRequestError, validate_input_ids
from sglkit.runtime.frontend.token_only import require_tokenizer

MAX_EMBEDDING_BATCH_SIZE = 2048  # inputs per call (OpenAI's limit for /v1/embeddings)


@dataclass
class EmbeddingInput:
    """One encode call as given by the user: text or token ids, single or a list (not yet tokenized)."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    rid: str | list[str] | None = None


def _items(inp: EmbeddingInput, text_param: str, ids_param: str) -> tuple[bool, list, str]:
    """(is_batch, the inputs as a list, the parameter they came from)."""
    if inp.text is not None and inp.input_ids is not None:
        raise InvalidRequestError("Either text or input_ids should be provided, not both.", text_param)
    if inp.text is not None:
        if isinstance(inp.text, str):
            return False, [inp.text], text_param
        if not isinstance(inp.text, list):
            raise InvalidRequestError(f"{text_param} must be a string or a list of strings.", text_param)
        return True, inp.text, text_param
    if inp.input_ids is None:
        raise InvalidRequestError(f"Either {text_param} or {ids_param} should be provided.", text_param)
    if not isinstance(inp.input_ids, list):
        raise InvalidRequestError(
            f"{ids_param} must be a list of token ids or a list of such lists.", ids_param
        )
    if inp.input_ids and isinstance(inp.input_ids[0], list):
        return True, inp.input_ids, ids_param
    return False, [inp.input_ids], ids_param


def _tokenize(tokenizer, texts: list[str], context_len: int, param: str, is_batch: bool) -> list[list[int]]:
    """Token ids of each text; one batched call when every text is short, bounded work per text otherwise."""
    short = max(context_len * WINDOW_CHARS_PER_TOKEN, EXACT_COUNT_CHARS)
    if all(len(text) <= short for text in texts):
        return tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
    return [
        encode_bounded(
            tokenizer, text, context_len, context_len, param, where=f"{param}[{i}]" if is_batch else ""
        )
        for i, text in enumerate(texts)
    ]


def build_embedding_requests(
    inp: EmbeddingInput,
    tokenizer,
    vocab_size: int,
    context_len: int,
    max_batch_size: int = MAX_EMBEDDING_BATCH_SIZE,
    text_param: str = "text",
    ids_param: str = "input_ids",
) -> tuple[bool, list[TokenizedEmbeddingReq]]:
    """Validate and tokenize ``inp``; returns (is_batch, one request per input, in order).

    ``text_param`` / ``ids_param`` are the names errors use for the two fields (``input`` for /v1/embeddings).
    """
    is_batch, items, param = _items(inp, text_param, ids_param)
    if not items:
        raise InvalidRequestError("The batch of inputs is empty.", param)
    check_num_inputs(len(items), len(items), max_batch_size, param)
    rids = inp.rid if isinstance(inp.rid, list) else None
    if rids is not None and len(rids) != len(items):
        raise InvalidRequestError(f"rid has {len(rids)} entries for {len(items)} inputs.", "rid")
    if inp.text is not None:
        require_tokenizer(tokenizer, f"A text {text_param}", text_param)  # --skip-tokenizer-init
        for i, text in enumerate(items):
            where = f"{param}[{i}]" if is_batch else param
            if not isinstance(text, str):
                raise InvalidRequestError(f"{where} must be a string.", param)
            if not text:
                raise InvalidRequestError(
                    f"{where} is empty." if is_batch else "The input text is empty.", param
                )
        token_lists = _tokenize(tokenizer, items, context_len, param, is_batch)
        texts: list[str | None] = list(items)
    else:
        token_lists = [validate_input_ids(ids, vocab_size, param) for ids in items]
        texts = [None] * len(items)
    reqs = []
    for i, ids in enumerate(token_lists):
        if not ids:
            raise InvalidRequestError(
                f"The input {param}[{i}] has no tokens." if is_batch else "The input has no tokens.", param
            )
        if len(ids) > context_len:
            where = f"{param}[{i}]" if is_batch else ""
            raise InvalidRequestError(input_too_long_message(len(ids), context_len, where), param)
        if rids is not None:
            rid = rids[i]
        elif isinstance(inp.rid, str):
            rid = f"{inp.rid}-{i}" if is_batch else inp.rid
        else:
            rid = uuid.uuid4().hex
        reqs.append(TokenizedEmbeddingReq(rid=rid, input_ids=list(ids), input_text=texts[i]))
    return is_batch, reqs
