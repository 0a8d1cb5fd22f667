"""OpenAI request -> ``GenerateInput`` (between the OpenAI routes and the tokenizer manager), pure and unit-testable.

Checks first (unsupported features and unknown models are 400s), then the OpenAI + SGLang-extra fields become
``SamplingParams`` / ``GenerateInput`` names; internal parameter names in errors are renamed back to the request's
OpenAI ones (``max_new_tokens`` -> ``max_tokens``). Chat prompts come templated from ``openai_prompt``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError
from sglkit.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest
from sglkit.server.response_format import grammar_params, response_format_grammar

DEFAULT_COMPLETION_MAX_TOKENS = 16
"""``max_tokens`` of a completion request that sets none (OpenAI's default)."""
_INTERNAL_NAME = re.compile(
    r"\b(max_new_tokens|min_new_tokens|sampling_seed|top_logprobs_num|logprob_start_len|input_ids)\b"
)


def check_supported(req: SamplingRequest) -> None:
    """Refuse (400) the features sglkit does not implement instead of silently ignoring them."""
    grammar_params(req.response_format, req.regex, req.ebnf, req.json_schema)
    if isinstance(req, ChatCompletionRequest):
        if req.top_logprobs and not req.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true.", "top_logprobs")
    if isinstance(req, CompletionRequest):
        if req.suffix:
            raise InvalidRequestError("suffix is not supported.", "suffix")
        if req.best_of is not None and req.best_of != 1:
            raise InvalidRequestError("best_of is not supported; use n.", "best_of")


def model_error(requested: str | None, served_name: str, model_paths: list[str]) -> str | None:
    """The 400 message for a ``model`` this server does not serve, or None when it is accepted."""
    if requested is None or requested in ("default", served_name, *model_paths):
        return None
    return f"The model {requested!r} does not exist. This server serves {served_name!r}."


def sampling_params_dict(req: SamplingRequest, max_new_tokens: int) -> dict[str, Any]:
    """OpenAI + SGLang-extra fields -> a ``SamplingParams`` dict (unset fields left to its defaults)."""
    values = {
        "max_new_tokens": max_new_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "min_p": req.min_p,
        "n": req.n,
        "stop": req.stop,
        "stop_token_ids": req.stop_token_ids,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "repetition_penalty": req.repetition_penalty,
        "min_new_tokens": req.min_tokens,
        "ignore_eos": req.ignore_eos,
        "skip_special_tokens": req.skip_special_tokens,
        "spaces_between_special_tokens": req.spaces_between_special_tokens,
        "no_stop_trim": req.no_stop_trim,
        "stop_regex": req.stop_regex,
        "logit_bias": req.logit_bias,
        "sampling_seed": req.seed,
        **grammar_params(req.response_format, req.regex, req.ebnf, req.json_schema),
    }
    return {k: v for k, v in values.items() if v is not None}


def chat_to_generate_input(
    req: ChatCompletionRequest, input_ids: list[int], max_context: int
) -> GenerateInput:
    """A templated chat request -> GenerateInput; no max tokens means all the room left in ``max_context``.

    More completion tokens than ``max_context`` is SGLang's 400 "max_completion_tokens is too large" (named as the
    request named it); an input plus output over the context is refused later, with SGLang's token counts.
    """
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if isinstance(max_new, int) and max_new > max_context:
        name = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        raise InvalidRequestError(
            f"{name} is too large: {max_new}. This model supports at most {max_context} completion tokens.",
            name,
        )
    if max_new is None:
        max_new = max(max_context - len(input_ids), 0)
    return GenerateInput(
        input_ids=list(input_ids),
        sampling_params=sampling_params_dict(req, max_new),
        rid=req.rid,
        return_logprob=bool(req.logprobs),
        logprob_start_len=-1,
        top_logprobs_num=(req.top_logprobs or 0) if req.logprobs else 0,
        stream=bool(req.stream),
    )


def completion_to_generate_input(req: CompletionRequest) -> GenerateInput:
    """A completion request -> GenerateInput; ``echo`` with ``logprobs`` scores the prompt too."""
    prompt = req.prompt
    is_text = isinstance(prompt, str) or not prompt or isinstance(prompt[0], str)
    max_new = req.max_tokens if req.max_tokens is not None else DEFAULT_COMPLETION_MAX_TOKENS
    with_logprobs = req.logprobs is not None
    return GenerateInput(
        text=prompt if is_text else None,
        input_ids=None if is_text else prompt,
        sampling_params=sampling_params_dict(req, max_new),
        rid=req.rid,
        return_logprob=with_logprobs,
        logprob_start_len=0 if (with_logprobs and req.echo) else -1,
        top_logprobs_num=req.logprobs or 0,
        stream=bool(req.stream),
    )


def param_names(req: SamplingRequest) -> dict[str, str]:
    """Internal (GenerateInput / SamplingParams) name -> the name in this OpenAI request."""
    names = {"min_new_tokens": "min_tokens", "sampling_seed": "seed"}
    if response_format_grammar(req.response_format):
        names.update(json_schema="response_format", structural_tag="response_format")
    if isinstance(req, ChatCompletionRequest):
        names["max_new_tokens"] = (
            "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        )
        names.update(top_logprobs_num="top_logprobs", text="messages", input_ids="messages", input="messages")
    else:
        names["max_new_tokens"] = "max_tokens"
        names.update(
            top_logprobs_num="logprobs",
            logprob_start_len="echo",
            text="prompt",
            input_ids="prompt",
            input="prompt",
        )
    return names


def to_public_error(err: InvalidRequestError, names: Mapping[str, str]) -> InvalidRequestError:
    """Rename internal parameter names in an error (param and message) to the request's OpenAI names."""
    message = _INTERNAL_NAME.sub(lambda m: names.get(m.group(1), m.group(1)), str(err))
    return InvalidRequestError(message, names.get(err.param, err.param) if err.param else None)
