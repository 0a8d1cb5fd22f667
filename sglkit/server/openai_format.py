"""OpenAI formatting (between the OpenAI routes and the tokenizer manager), pure and unit-testable.

Inbound: request models -> ``GenerateInput`` (SGLang parameter names); internal parameter names in errors are
renamed back to the OpenAI ones (``max_new_tokens`` -> ``max_tokens``). Outbound: the tokenizer manager's
chunks ``{"index", "text", "delta", "output_ids", "meta_info", "finished", "error"}`` -> ``chat.completion`` /
``text_completion`` objects, and stream formatters that turn each chunk into zero or more SSE events.
Choice ``index`` = position of the request in the expanded list (prompt i, sample j -> i * n + j).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError
from sglkit.server.protocol import (
    ChatCompletionChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    SamplingRequest,
    UsageInfo,
)

DEFAULT_COMPLETION_MAX_TOKENS = 16
MIN_LOGPROB = -9999.0  # OpenAI's floor; also keeps -inf out of JSON
_RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversation", "tools", "tokenize", "add_generation_prompt", "return_dict", "chat_template"}
)
_INTERNAL_NAME = re.compile(
    r"\b(max_new_tokens|min_new_tokens|sampling_seed|top_logprobs_num|logprob_start_len|input_ids)\b"
)

TokenDecoder = Callable[[int], str]
Chunk = dict[str, Any]


# ----------------------------------------------------------------------------- requests -> GenerateInput
def check_supported(req: SamplingRequest) -> None:
    """Refuse (400) the features sglkit does not implement instead of silently ignoring them."""
    fmt = req.response_format
    if fmt is not None and fmt.get("type", "text") != "text":
        raise InvalidRequestError(
            f"response_format type {fmt.get('type')!r} is not supported (sglkit has no constrained decoding).",
            "response_format",
        )
    for name in ("regex", "json_schema", "ebnf"):
        if getattr(req, name) is not None:
            raise InvalidRequestError(f"{name} is not supported (sglkit has no constrained decoding).", name)
    if isinstance(req, ChatCompletionRequest):
        if req.top_logprobs and not req.logprobs:
            raise InvalidRequestError("top_logprobs requires logprobs to be true.", "top_logprobs")
        if req.tool_choice not in (None, "none", "auto"):
            raise InvalidRequestError("Only tool_choice 'none' or 'auto' is supported.", "tool_choice")
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
        "logit_bias": req.logit_bias,
        "sampling_seed": req.seed,
    }
    return {k: v for k, v in values.items() if v is not None}


def template_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as plain dicts for the chat template; a list of text parts becomes one string."""
    out = []
    for m in req.messages:
        content = m.content
        if isinstance(content, list):
            content = "\n".join(part.text for part in content)
        msg: dict[str, Any] = {"role": m.role, "content": content if content is not None else ""}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(m, key) is not None:
                msg[key] = getattr(m, key)
        out.append(msg)
    return out


def apply_chat_template(
    tokenizer,
    messages: list[dict[str, Any]],
    tools: list | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
) -> list[int]:
    """Messages -> prompt token ids (with the generation prompt); a template failure is a 400 on ``messages``."""
    kwargs = {k: v for k, v in (template_kwargs or {}).items() if k not in _RESERVED_TEMPLATE_KWARGS}
    try:
        out = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, tokenize=True, **kwargs
        )
    except Exception as e:  # noqa: BLE001 - jinja errors, raise_exception(), missing template: all the user's input
        raise InvalidRequestError(
            f"The chat template could not be applied to messages: {e}", "messages"
        ) from None
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(t) for t in ids]


def chat_to_generate_input(
    req: ChatCompletionRequest, input_ids: list[int], max_context: int
) -> GenerateInput:
    """A templated chat request -> GenerateInput; no max tokens means all the room left in ``max_context``."""
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
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


def prompt_texts(req: CompletionRequest, decode_ids: Callable[[list[int]], str]) -> list[str]:
    """The text of each prompt (token prompts decoded), for ``echo``."""
    prompt = req.prompt
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        return []
    if isinstance(prompt[0], str):
        return list(prompt)
    if isinstance(prompt[0], int):
        return [decode_ids(prompt)]
    return [decode_ids(ids) for ids in prompt]


# ----------------------------------------------------------------------------- chunks -> responses
class TokenText:
    """Token id -> its text (special tokens kept), memoized; the ``decode`` of logprob entries."""

    def __init__(self, tokenizer) -> None:
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


def finish_fields(meta: Mapping[str, Any]) -> tuple[str | None, int | str | None]:
    """meta_info -> (finish_reason, matched_stop): "stop" | "length" | "abort", and the matched stop if any."""
    reason = meta.get("finish_reason")
    if not reason:
        return None, None
    kind = reason.get("type")
    return kind, reason.get("matched") if kind == "stop" else None


def usage_from(chunks: Mapping[int, Chunk], owners: list[int]) -> UsageInfo:
    """Usage over final chunks: each prompt counted once (n samples share it), every completion counted."""
    prompt_tokens = completion_tokens = 0
    seen: set[int] = set()
    for index, chunk in sorted(chunks.items()):
        meta = chunk["meta_info"]
        if owners[index] not in seen:
            seen.add(owners[index])
            prompt_tokens += meta.get("prompt_tokens", 0)
        completion_tokens += meta.get("completion_tokens", 0)
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


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


def build_chat_response(
    rid: str,
    created: int,
    model: str,
    finals: list[Chunk],
    owners: list[int],
    decode: TokenDecoder | None = None,
    logprobs: bool = False,
) -> dict[str, Any]:
    """Final chunks (one per choice) -> a ``chat.completion`` dict."""
    choices = []
    for chunk in finals:
        finish, matched = finish_fields(chunk["meta_info"])
        choices.append(
            ChatCompletionChoice(
                index=chunk["index"],
                message=ChatMessageOut(content=chunk["text"]),
                logprobs=chat_logprobs(chunk["meta_info"], decode) if logprobs else None,
                finish_reason=finish,
                matched_stop=matched,
            )
        )
    usage = usage_from({c["index"]: c for c in finals}, owners)
    return ChatCompletionResponse(
        id=rid, created=created, model=model, choices=choices, usage=usage
    ).model_dump()


def _completion_choice(chunk: Chunk, text: str, logprobs: dict | None) -> CompletionChoice:
    finish, matched = finish_fields(chunk["meta_info"]) if chunk["finished"] else (None, None)
    return CompletionChoice(
        index=chunk["index"], text=text, logprobs=logprobs, finish_reason=finish, matched_stop=matched
    )


def build_completion_response(
    rid: str,
    created: int,
    model: str,
    finals: list[Chunk],
    owners: list[int],
    echo_texts: list[str] | None = None,
    decode: TokenDecoder | None = None,
    logprobs: int | None = None,
) -> dict[str, Any]:
    """Final chunks -> a ``text_completion`` dict; ``echo_texts[owner]`` is prepended when echoing."""
    choices = []
    for chunk in finals:
        prefix = echo_texts[owners[chunk["index"]]] if echo_texts else ""
        lp = None
        if logprobs is not None:
            meta = chunk["meta_info"]
            lp = completion_logprobs(logprob_entries(meta, "output"), decode, len(prefix))
            if echo_texts:
                prompt_lp = echo_logprobs(meta, decode, len(prefix))
                lp = {key: prompt_lp[key] + lp[key] for key in lp}
        choices.append(_completion_choice(chunk, prefix + chunk["text"], lp))
    usage = usage_from({c["index"]: c for c in finals}, owners)
    return CompletionResponse(id=rid, created=created, model=model, choices=choices, usage=usage).model_dump()


class ChatStreamFormatter:
    """Turns streamed chunks into ``chat.completion.chunk`` events: a role chunk first, then content deltas, the
    last one per choice with ``finish_reason``; ``usage_event`` gives the final choice-less usage chunk."""

    def __init__(
        self,
        rid: str,
        created: int,
        model: str,
        owners: list[int],
        decode: TokenDecoder | None = None,
        logprobs: bool = False,
    ) -> None:
        self.rid, self.created, self.model, self.owners = rid, created, model, owners
        self.decode, self.logprobs = decode, logprobs
        self.num_logprobs_sent: dict[int, int] = {}
        self.finals: dict[int, Chunk] = {}

    def _event(
        self,
        index: int,
        delta: dict[str, Any],
        logprobs: dict | None = None,
        finish: str | None = None,
        matched: int | str | None = None,
    ) -> dict[str, Any]:
        choice = ChatCompletionStreamChoice(
            index=index, delta=delta, logprobs=logprobs, finish_reason=finish, matched_stop=matched
        )
        return ChatCompletionStreamResponse(
            id=self.rid, created=self.created, model=self.model, choices=[choice]
        ).model_dump()

    def on_chunk(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The events for one chunk (possibly none: a chunk with no new text, logprobs or finish)."""
        index, meta = chunk["index"], chunk["meta_info"]
        events = []
        if index not in self.num_logprobs_sent:
            self.num_logprobs_sent[index] = 0
            events.append(self._event(index, {"role": "assistant", "content": ""}))
        lp = None
        if self.logprobs:
            lp = chat_logprobs(meta, self.decode, self.num_logprobs_sent[index])
            self.num_logprobs_sent[index] += len(lp["content"])
            lp = lp if lp["content"] else None
        finish, matched = finish_fields(meta) if chunk["finished"] else (None, None)
        if chunk["finished"]:
            self.finals[index] = chunk
        delta = {"content": chunk["delta"]} if chunk["delta"] else {}
        if delta or lp or chunk["finished"]:
            events.append(self._event(index, delta, lp, finish, matched))
        return events

    def usage_event(self) -> dict[str, Any]:
        """The ``stream_options.include_usage`` chunk: no choices, the usage of every finished choice."""
        return ChatCompletionStreamResponse(
            id=self.rid,
            created=self.created,
            model=self.model,
            choices=[],
            usage=usage_from(self.finals, self.owners),
        ).model_dump()


class CompletionStreamFormatter:
    """Turns streamed chunks into ``text_completion`` events; the first event of a choice carries the echo."""

    def __init__(
        self,
        rid: str,
        created: int,
        model: str,
        owners: list[int],
        echo_texts: list[str] | None = None,
        decode: TokenDecoder | None = None,
        logprobs: int | None = None,
    ) -> None:
        self.rid, self.created, self.model, self.owners = rid, created, model, owners
        self.echo_texts, self.decode, self.logprobs = echo_texts, decode, logprobs
        self.num_logprobs_sent: dict[int, int] = {}
        self.next_text_offset: dict[int, int] = {}  # as in the non-streamed answer: echo + token texts so far
        self.finals: dict[int, Chunk] = {}

    def on_chunk(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The events for one chunk (possibly none)."""
        index, meta = chunk["index"], chunk["meta_info"]
        first = index not in self.num_logprobs_sent
        text = chunk["delta"]
        lp = None
        if first:
            self.num_logprobs_sent[index] = 0
            if self.echo_texts:
                text = self.echo_texts[self.owners[index]] + text
            self.next_text_offset[index] = len(text) - len(chunk["delta"])
        if self.logprobs is not None:
            sent = self.num_logprobs_sent[index]
            lp = completion_logprobs(
                logprob_entries(meta, "output", sent), self.decode, self.next_text_offset[index]
            )
            self.num_logprobs_sent[index] = sent + len(lp["tokens"])
            if lp["tokens"]:
                self.next_text_offset[index] = lp["text_offset"][-1] + len(lp["tokens"][-1])
            if first and self.echo_texts:
                prompt_lp = echo_logprobs(meta, self.decode, len(text) - len(chunk["delta"]))
                lp = {key: prompt_lp[key] + lp[key] for key in lp}
            lp = lp if lp["tokens"] else None
        if chunk["finished"]:
            self.finals[index] = chunk
        if not (text or lp or chunk["finished"]):
            return []
        choice = _completion_choice(chunk, text, lp)
        return [
            CompletionResponse(
                id=self.rid, created=self.created, model=self.model, choices=[choice]
            ).model_dump()
        ]

    def usage_event(self) -> dict[str, Any]:
        """The ``stream_options.include_usage`` chunk: no choices, the usage of every finished choice."""
        return CompletionResponse(
            id=self.rid,
            created=self.created,
            model=self.model,
            choices=[],
            usage=usage_from(self.finals, self.owners),
        ).model_dump()
