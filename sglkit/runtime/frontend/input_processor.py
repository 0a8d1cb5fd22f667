"""Input processing (front end, before the scheduler): normalize single/batch inputs, tokenize, validate.

Shared by the offline Engine and the HTTP tokenizer manager so both accept and reject exactly the same inputs.
Every rejection is an ``InvalidRequestError`` (a ValueError) naming the offending parameter.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from sglkit.constrained import GrammarError, validate_grammar
from sglkit.core.messages import TokenizedGenerateReq, input_too_long_message
from sglkit.core.sampling_params import SamplingParamError, SamplingParams
from sglkit.runtime.frontend.errors import InvalidRequestError
from sglkit.runtime.frontend.input_limits import check_num_inputs, encode_bounded
from sglkit.runtime.frontend.logprob_options import TokenIdsLogprobError, pick_token_ids_logprob
from sglkit.runtime.frontend.sampling_defaults import apply_sampling_defaults
from sglkit.runtime.frontend.token_only import check_token_only_request

MAX_TOP_LOGPROBS = 20


@dataclass
class GenerateInput:
    """One generate call as given by the user (single or batch, not yet tokenized)."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict | list[dict] | None = None
    rid: str | list[str] | None = None
    return_logprob: bool | list[bool] = False
    logprob_start_len: int | list[int] | None = None
    top_logprobs_num: int | list[int] | None = None
    stream: bool = False
    token_ids_logprob: list[int] | list[list[int]] | None = None


def _is_batch(inp: GenerateInput) -> bool:
    if inp.text is not None and inp.input_ids is not None:
        raise InvalidRequestError("Either text or input_ids should be provided, not both.", "text")
    if inp.text is not None:
        if not isinstance(inp.text, (str, list)):
            raise InvalidRequestError("text must be a string or a list of strings.", "text")
        return isinstance(inp.text, list)
    if inp.input_ids is None:
        raise InvalidRequestError("Either text or input_ids should be provided.", "text")
    if not isinstance(inp.input_ids, list):
        raise InvalidRequestError(
            "input_ids must be a list of token ids or a list of such lists.", "input_ids"
        )
    return len(inp.input_ids) > 0 and isinstance(inp.input_ids[0], list)


def _pick(value: Any, index: int, num: int, name: str) -> Any:
    if isinstance(value, list):
        if len(value) != num:
            raise InvalidRequestError(f"{name} has {len(value)} entries for {num} inputs.", name)
        return value[index]
    return value


def _input_param(inp: GenerateInput) -> str:
    return "text" if inp.text is not None else "input_ids"


def _num_samples(sampling_params: Any, num_inputs: int) -> int:
    """The samples a request asks for: each input's ``n`` (a bad ``n`` counts 1; it is refused later)."""

    def n_of(params: Any) -> int:
        n = params.get("n", 1) if isinstance(params, dict) else 1
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1

    if isinstance(sampling_params, list):
        return sum(n_of(p) for p in sampling_params)
    return n_of(sampling_params) * num_inputs


def validate_input_ids(input_ids: Any, vocab_size: int, param: str = "input_ids") -> list[int]:
    """Token ids must be a non-empty list of ints in [0, vocab_size)."""
    if not isinstance(input_ids, list) or not input_ids:
        raise InvalidRequestError(f"{param} must be a non-empty list of token ids.", param)
    for token in input_ids:
        if not isinstance(token, int) or isinstance(token, bool):
            raise InvalidRequestError(f"{param} must contain integers, got {token!r}.", param)
        if not 0 <= token < vocab_size:
            raise InvalidRequestError(
                f"Token id {token} in {param} is out of vocabulary [0, {vocab_size}).", param
            )
    return input_ids


def check_context_length(
    num_input: int,
    max_new_tokens: int,
    context_len: int,
    param: str = "max_new_tokens",
    input_param: str = "input_ids",
) -> None:
    """SGLang's two context-length errors: the input alone (``input_param``), or input + output (``param``)."""
    if num_input >= context_len:
        raise InvalidRequestError(input_too_long_message(num_input, context_len), input_param)
    if num_input + max_new_tokens > context_len:
        raise InvalidRequestError(
            f"Requested token count exceeds the model's maximum context length of {context_len} tokens. "
            f"You requested a total of {num_input + max_new_tokens} tokens: {num_input} tokens from the input "
            f"messages and {max_new_tokens} tokens for the completion. Please reduce the number of tokens in the "
            "input messages or the completion to fit within the limit.",
            param,
        )


def build_requests(
    inp: GenerateInput,
    tokenizer,
    vocab_size: int,
    context_len: int,
    grammar_backend: str = "xgrammar",
    sampling_defaults: dict | None = None,
    max_inputs: int | None = None,
) -> tuple[bool, list[TokenizedGenerateReq], list[int]]:
    """Validate and tokenize. Returns (is_batch, requests, input index of each request); n > 1 expands in place.

    A grammar (json_schema / regex / ebnf / structural_tag) is parsed here, so a bad one is refused before
    anything is queued; ``grammar_backend`` "none" refuses every grammar. ``sampling_defaults`` (the model's
    generation_config.json values, ``sampling_defaults.model_sampling_defaults``) fill the keys a request leaves
    unset. ``max_inputs`` (``--max-inputs-per-request``) bounds the inputs x ``n`` before anything is tokenized;
    a text is tokenized with bounded work (``input_limits.encode_bounded``).
    """
    is_batch = _is_batch(inp)
    if is_batch:
        items = inp.text if inp.text is not None else inp.input_ids
        if not items:
            raise InvalidRequestError(
                "The batch of inputs is empty.", "text" if inp.text is not None else "input_ids"
            )
    else:
        items = [inp.text if inp.text is not None else inp.input_ids]
    num = len(items)
    check_num_inputs(num, _num_samples(inp.sampling_params, num), max_inputs, _input_param(inp))
    reqs: list[TokenizedGenerateReq] = []
    owners: list[int] = []
    for i, item in enumerate(items):
        params_dict = _pick(inp.sampling_params, i, num, "sampling_params") or {}
        if not isinstance(params_dict, dict):
            raise InvalidRequestError("sampling_params must be an object.", "sampling_params")
        params_dict = apply_sampling_defaults(params_dict, sampling_defaults or {})
        try:
            params = SamplingParams.from_dict(params_dict)
            params.verify(vocab_size)
            params.normalize()
            if tokenizer is None:  # --skip-tokenizer-init
                check_token_only_request(inp.text, params)
            validate_grammar(params.grammar, grammar_backend)
        except (SamplingParamError, GrammarError) as e:
            raise InvalidRequestError(str(e), e.param) from e
        if inp.text is not None:
            if not isinstance(item, str):
                raise InvalidRequestError("text must be a string or a list of strings.", "text")
            if not item:
                raise InvalidRequestError("The input text is empty.", "text")
            where = f"text[{i}]" if is_batch else ""
            input_ids = encode_bounded(tokenizer, item, context_len - 1, context_len, "text", where=where)
            text = item
        else:
            input_ids = validate_input_ids(item, vocab_size)
            text = None
        check_context_length(
            len(input_ids),
            params.max_new_tokens,
            context_len,
            input_param="text" if inp.text is not None else "input_ids",
        )
        return_logprob = bool(_pick(inp.return_logprob, i, num, "return_logprob"))
        start = _pick(inp.logprob_start_len, i, num, "logprob_start_len")
        start = -1 if start is None else start
        if not isinstance(start, int) or start < -1 or start >= max(len(input_ids), 1):
            raise InvalidRequestError(
                f"logprob_start_len must be -1 or in [0, {len(input_ids)}).", "logprob_start_len"
            )
        top_n = _pick(inp.top_logprobs_num, i, num, "top_logprobs_num") or 0
        if not isinstance(top_n, int) or not 0 <= top_n <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(
                f"top_logprobs_num must be in [0, {MAX_TOP_LOGPROBS}].", "top_logprobs_num"
            )
        try:
            token_ids = pick_token_ids_logprob(
                inp.token_ids_logprob, i, num, is_batch, vocab_size, return_logprob
            )
        except TokenIdsLogprobError as e:
            raise InvalidRequestError(str(e), e.param) from None
        base_rid = _pick(inp.rid, i, num, "rid") or uuid.uuid4().hex
        for j in range(params.n):
            rid = base_rid if params.n == 1 else f"{base_rid}-{j}"
            # n seeded samples must differ: sample j gets seed + j (sample 0 equals the n=1 request).
            seeded = params.sampling_seed is not None and j > 0
            reqs.append(
                TokenizedGenerateReq(
                    rid=rid,
                    input_ids=list(input_ids),
                    sampling_params=replace(params, sampling_seed=params.sampling_seed + j)
                    if seeded
                    else params,
                    input_text=text,
                    return_logprob=return_logprob,
                    logprob_start_len=start,
                    top_logprobs_num=top_n,
                    stream=inp.stream,
                    token_ids_logprob=token_ids,
                )
            )
            owners.append(i)
    return is_batch, reqs, owners
