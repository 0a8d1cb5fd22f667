"""Responses API requests (``/v1/responses`` body -> a chat request for the shared chat path in ``openai_api``).

``check_responses_fields`` answers refused and unknown top-level fields; ``ResponsesRequest`` validates the rest.
``to_chat_request`` turns ``instructions`` + the stored conversation of ``previous_response_id`` + ``input`` into
chat ``messages`` and the other fields into their chat names: ``max_output_tokens`` -> ``max_completion_tokens``,
function tools ``{"type": "function", "name", ...}`` -> ``{"type": "function", "function": {...}}``,
``text.format`` -> ``response_format``, ``reasoning.effort: "none"`` -> thinking off in the chat template
(``enable_thinking`` / ``thinking`` false, over any ``chat_template_kwargs``).
Input items: messages (role user / system / developer / assistant; content a string or ``input_text`` /
``output_text`` parts), ``function_call`` (joins the assistant turn before it), ``function_call_output`` (a tool
message) and ``reasoning`` (the next assistant turn's ``reasoning_content``). System and developer messages at the
start join ``instructions`` in one leading system message (most chat templates accept only one).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.protocol import (
    TOOL_NAME_PATTERN,
    Bool,
    ChatCompletionRequest,
    Float,
    Int,
    validate_request,
)

__all__ = [
    "ResponsesRequest",
    "check_responses_fields",
    "public_param",
    "to_chat_request",
]

UNSUPPORTED_FIELDS = {
    "background": "background responses are not supported",
    "conversation": "conversations are not supported; continue with previous_response_id",
    "prompt": "prompt templates are not supported",
    "include": "no extra output data can be included",
    "max_tool_calls": "max_tool_calls is not supported",
    "top_logprobs": "logprobs are not supported on /v1/responses; use /v1/chat/completions",
    "truncation": "only 'disabled' truncation is supported (a too long input is a 400)",
    "stream_options": "stream options are not supported",
    "prompt_cache_retention": "prompt cache retention is not supported; the radix cache is automatic",
    "context_management": "context management is not supported",
}
"""Responses fields refused when set to anything but their "off" value (value: the reason)."""

DESCRIPTIVE_FIELDS = {
    "safety_identifier": "an end-user id for the caller's records",
    "prompt_cache_key": "a cache hint; the radix cache reuses shared prefixes by itself",
    "service_tier": "'auto' or 'default' only: one tier",
}
"""Accepted fields with no effect (``service_tier`` only as 'auto' / 'default')."""

_OFF_VALUES: dict[str, tuple[Any, ...]] = {
    "background": (False,),
    "truncation": ("disabled",),
    "top_logprobs": (0,),
    "service_tier": ("auto", "default"),
}
_INPUT_ROLES = ("user", "system", "developer", "assistant")
_TEXT_PARTS = ("input_text", "output_text", "text")


def _is_off(name: str, value: Any) -> bool:
    if value is None or value == [] or value == {}:
        return True
    return any(value == off and type(value) is type(off) for off in _OFF_VALUES.get(name, ()))


def check_responses_fields(body: dict[str, Any]) -> None:
    """400 naming a refused top-level field, or OpenAI's 'Unrecognized request argument supplied: X'."""
    for name, value in body.items():
        if name in ResponsesRequest.model_fields:
            continue
        if name in UNSUPPORTED_FIELDS or name in _OFF_VALUES:
            if not _is_off(name, value):
                reason = UNSUPPORTED_FIELDS.get(name) or DESCRIPTIVE_FIELDS[name]
                raise InvalidRequestError(f"{name}: {reason}.", name)
            continue
        if name not in DESCRIPTIVE_FIELDS:
            raise InvalidRequestError(f"Unrecognized request argument supplied: {name}", name)


# ----------------------------------------------------------------------------- request model
class _Strictish(BaseModel):
    model_config = ConfigDict(extra="ignore")


class FunctionTool(_Strictish):
    """A Responses function tool: ``{"type": "function", "name", "description", "parameters", "strict"}``."""

    type: Literal["function"]
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: Bool | None = None


class NamedFunctionChoice(_Strictish):
    """``tool_choice`` naming one function: ``{"type": "function", "name": ...}``."""

    type: Literal["function"]
    name: str


class TextConfig(_Strictish):
    """``text``: the output ``format`` (text, json_object, json_schema); ``verbosity`` is refused when set."""

    format: dict[str, Any] | None = None
    verbosity: str | None = None


class ReasoningConfig(_Strictish):
    """``reasoning``: ``effort`` "none" turns thinking off; other efforts and summaries are refused."""

    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponsesRequest(_Strictish):
    """Body of ``POST /v1/responses`` (OpenAI's fields sglkit honours, plus SGLang's sampling extras)."""

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: Int | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    stream: Bool | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: Bool | None = None
    text: TextConfig | None = None
    previous_response_id: str | None = None
    store: Bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    reasoning: ReasoningConfig | None = None
    # SGLang extras (same names as on /v1/chat/completions).
    chat_template_kwargs: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    top_k: Int | None = None
    min_p: Float | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    repetition_penalty: Float | None = None
    seed: Int | None = None

    @property
    def stored(self) -> bool:
        """``store`` (default true): keep the response for retrieval and ``previous_response_id``."""
        return self.store is not False


# ----------------------------------------------------------------------------- input -> chat messages
def _text_of(content: Any, where: str) -> str:
    """A message's content (a string or text parts) -> one string (parts joined by newlines, as chat does)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where}.content must be a string or a list of text parts.", "input")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS and kind != "refusal":
            raise InvalidRequestError(
                f"{where}.content[{j}]: only text parts ({', '.join(_TEXT_PARTS[:2])}) are supported, "
                f"not {kind!r}.",
                "input",
            )
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise InvalidRequestError(f"{where}.content[{j}].text must be a string.", "input")
        texts.append(text)
    return "\n".join(texts)


def _field(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequestError(f"{where}.{key} must be a string.", "input")
    return value


def input_messages(items: str | list[dict[str, Any]], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``input`` -> chat message dicts appended to ``history`` (a copy): the conversation for the template."""
    messages = [dict(m) for m in history]
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not items:
        raise InvalidRequestError("input must be a string or a non-empty list of input items.", "input")
    call_names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
    reasoning: str | None = None
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in _INPUT_ROLES:
                raise InvalidRequestError(f"{where}.role must be one of {', '.join(_INPUT_ROLES)}.", "input")
            msg: dict[str, Any] = {"role": "system" if role == "developer" else role}
            msg["content"] = _text_of(item.get("content"), where)
            if role == "assistant" and reasoning is not None:
                msg["reasoning_content"], reasoning = reasoning, None
            messages.append(msg)
        elif kind == "function_call":
            call_id, name = _field(item, "call_id", where), _field(item, "name", where)
            call = {"id": call_id, "type": "function", "function": {"name": name}}
            call["function"]["arguments"] = _field(item, "arguments", where)  # the template decodes JSON
            call_names[call_id] = name
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": ""}
                messages.append(last)
            if reasoning is not None:
                last["reasoning_content"], reasoning = reasoning, None
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            call_id = _field(item, "call_id", where)
            output = item.get("output")
            msg = {"role": "tool", "tool_call_id": call_id, "content": _text_of(output, where)}
            if call_id in call_names:
                msg["name"] = call_names[call_id]
            messages.append(msg)
        elif kind == "reasoning":
            parts = item.get("content") or []
            texts = [p.get("text") for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []
            reasoning = "".join(t for t in texts if isinstance(t, str))
        else:
            raise InvalidRequestError(
                f"{where}.type {kind!r} is not supported; use message, function_call, function_call_output "
                "or reasoning items.",
                "input",
            )
    return messages


def _leading_system(instructions: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``instructions`` and the system messages at the start -> one leading system message."""
    texts = [instructions] if instructions else []
    start = 0
    while start < len(messages) and messages[start]["role"] == "system":
        texts.append(messages[start]["content"])
        start += 1
    head = [{"role": "system", "content": "\n\n".join(texts)}] if texts else []
    return head + messages[start:]


# ----------------------------------------------------------------------------- the chat request
def _response_format(text: TextConfig | None) -> dict[str, Any] | None:
    if text is None:
        return None
    if text.verbosity is not None:
        raise InvalidRequestError("text.verbosity is not supported.", "text.verbosity")
    fmt = text.format
    if fmt is None or fmt.get("type") != "json_schema":
        return fmt
    if not isinstance(fmt.get("schema"), dict):
        raise InvalidRequestError("text.format of type 'json_schema' needs a schema object.", "text.format")
    spec = {key: fmt[key] for key in ("name", "schema", "strict", "description") if key in fmt}
    return {"type": "json_schema", "json_schema": spec}


def _template_kwargs(req: ResponsesRequest) -> dict[str, Any] | None:
    reasoning = req.reasoning
    if reasoning is None:
        return req.chat_template_kwargs
    for name in ("summary", "generate_summary"):
        if getattr(reasoning, name) is not None:
            raise InvalidRequestError(
                f"reasoning.{name}: reasoning summaries are not supported.", "reasoning"
            )
    if reasoning.effort not in (None, "none"):
        raise InvalidRequestError(
            "reasoning.effort: only 'none' (thinking off) is supported; turn thinking on with "
            'chat_template_kwargs {"enable_thinking": true}.',
            "reasoning",
        )
    if reasoning.effort is None:
        return req.chat_template_kwargs
    return {**(req.chat_template_kwargs or {}), "thinking": False, "enable_thinking": False}  # "none" wins


def to_chat_request(
    req: ResponsesRequest, history: list[dict[str, Any]], rid: str
) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
    """(the chat request that generates this response, the conversation so far without ``instructions``, which
    a later ``previous_response_id`` does not inherit); ``history``: the previous response's conversation."""
    conversation = input_messages(req.input, history)
    messages = _leading_system(req.instructions, conversation)
    choice = req.tool_choice
    if isinstance(choice, NamedFunctionChoice):
        choice = {"type": "function", "function": {"name": choice.name}}
    tools = None
    if req.tools is not None:
        tools = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
            for t in req.tools
        ]
    body = {
        "model": req.model,
        "messages": messages,
        "max_completion_tokens": req.max_output_tokens,
        "tools": tools,
        "tool_choice": choice,
        "parallel_tool_calls": req.parallel_tool_calls,
        "response_format": _response_format(req.text),
        "chat_template_kwargs": _template_kwargs(req),
        "stream": req.stream,
        "rid": rid,
        **req.model_dump(
            include={
                "temperature",
                "top_p",
                "stop",
                "top_k",
                "min_p",
                "presence_penalty",
                "frequency_penalty",
                "repetition_penalty",
                "seed",
            }
        ),
    }
    chat = validate_request(ChatCompletionRequest, {k: v for k, v in body.items() if v is not None})
    return chat, conversation  # type: ignore[return-value]


_CHAT_NAMES = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}
_CHAT_NAME = re.compile(r"\b(" + "|".join(_CHAT_NAMES) + r")\b")


def public_param(text: str | None) -> str | None:
    """A chat-path parameter name (or a message naming them) in the Responses request's names."""
    if text is None:
        return None
    return _CHAT_NAME.sub(lambda m: _CHAT_NAMES[m.group(1)], text)
