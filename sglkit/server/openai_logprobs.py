"""Logprob formatting (runtime ``meta_info`` logprobs -> OpenAI ``logprobs`` fields, for ``openai_response``).

The runtime gives SGLang's ``{input,output}_token_logprobs`` triples ``[logprob, token_id, None]`` and per-position
top lists of such triples. Chat answers get ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``, legacy
completions ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` (with the prompt's for ``echo``).
Logprobs are clamped to OpenAI's floor, which also keeps -inf out of JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

MIN_LOGPROB = -9999.0
"""OpenAI's floor for a logprob; also keeps -inf out of JSON."""

TokenDecoder = Callable[[int], str]
"""Token id -> its text (a :class:`TokenText`, or a stub in tests)."""


class TokenText:
    """Token id -> its text (special tokens kept), memoized; the ``decode`` of logprob entries."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        """The text of one token."""
        text = self.cache.get(token_id)
        if text is None:
            text = self.cache[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text


def clamp_logprob(value: float | None) -> float | None:
    """None stays None; -inf, NaN and anything below OpenAI's floor become ``MIN_LOGPROB``."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) and value > MIN_LOGPROB else MIN_LOGPROB


def _chat_token(decode: TokenDecoder, logprob: float | None, token_id: int) -> dict[str, Any]:
    text = decode(token_id)
    return {"token": text, "logprob": clamp_logprob(logprob), "bytes": list(text.encode("utf-8"))}


def chat_logprobs(meta: Mapping[str, Any], decode: TokenDecoder, start: int = 0) -> dict[str, Any]:
    """Output logprobs from position ``start`` -> ``{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}``."""
    triples = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs") or []
    content = []
    for j in range(start, len(triples)):
        entry = _chat_token(decode, triples[j][0], triples[j][1])
        top = tops[j] if j < len(tops) and tops[j] else []
        entry["top_logprobs"] = [_chat_token(decode, t[0], t[1]) for t in top]
        content.append(entry)
    return {"content": content}


def logprob_entries(meta: Mapping[str, Any], kind: str, start: int = 0) -> list[tuple[list, list | None]]:
    """(triple, top list) pairs of ``kind`` "input" or "output", from position ``start``.

    The top list is None only where the runtime says so (the first prompt token, which has no logprob);
    missing top lists (``top_logprobs_num`` 0) are empty.
    """
    triples = meta.get(f"{kind}_token_logprobs") or []
    tops = meta.get(f"{kind}_top_logprobs") or []
    return [(triples[j], tops[j] if j < len(tops) else []) for j in range(start, len(triples))]


def completion_logprobs(
    entries: list[tuple[list, list | None]], decode: TokenDecoder, text_offset: int = 0
) -> dict[str, list]:
    """Entries -> ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` (legacy completions shape)."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for triple, top in entries:
        text = decode(triple[1])
        out["tokens"].append(text)
        out["token_logprobs"].append(clamp_logprob(triple[0]))
        out["top_logprobs"].append(None if top is None else {decode(t[1]): clamp_logprob(t[0]) for t in top})
        out["text_offset"].append(text_offset)
        text_offset += len(text)
    return out


def echo_logprobs(meta: Mapping[str, Any], decode: TokenDecoder, echo_len: int) -> dict[str, list]:
    """The prompt's logprobs for ``echo``, offsets aligned so the prompt tokens end where the echoed text ends.

    The echoed text is the prompt as given, which lacks special tokens such as BOS; tokens before the text's
    start get offset 0. Output offsets then continue at ``echo_len`` without going backwards.
    """
    lp = completion_logprobs(logprob_entries(meta, "input"), decode)
    shift = echo_len - sum(len(token) for token in lp["tokens"])
    lp["text_offset"] = [max(0, offset + shift) for offset in lp["text_offset"]]
    return lp
