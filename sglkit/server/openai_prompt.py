"""Prompt building (OpenAI request model -> prompt, before ``openai_request`` turns the request into a GenerateInput).

Chat: ``messages`` -> plain dicts -> the tokenizer's chat template -> prompt token ids (with the generation prompt,
or continuing the final assistant message; a template failure is a 400 on ``messages``). Tool-call arguments sent
as JSON strings reach the template as objects (as in SGLang and vLLM: templates render them with ``tojson``).
Completions: the text of each prompt (token prompts decoded), which ``echo`` prepends to the answer.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from sglkit.runtime.frontend.input_limits import check_text_chars, encode_bounded
from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.protocol import ChatCompletionRequest, CompletionRequest

TOKENIZER_ARGUMENTS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "sanitize_control_tokens",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "add_special_tokens",
    }
)
"""Names ``chat_template_kwargs`` may not use: arguments of the tokenizer's ``apply_chat_template`` (or its
encoding call), not variables of the template; a template variable is any other name."""
_REQUEST_FIELDS = ("tools", "add_generation_prompt", "continue_final_message")


def _apply_chat_template_arguments(tokenizer: Any) -> frozenset[str]:
    """The named parameters of this tokenizer's ``apply_chat_template`` (they never reach the template)."""
    try:
        parameters = inspect.signature(tokenizer.apply_chat_template).parameters.values()
    except (TypeError, ValueError, AttributeError):
        return frozenset()
    return frozenset(p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def check_template_kwargs(
    kwargs: Any, tokenizer: Any = None, param: str = "chat_template_kwargs"
) -> dict[str, Any]:
    """``chat_template_kwargs`` as template variables: 400 naming ``chat_template_kwargs.<key>`` for a tokenizer
    argument (padding, max_length, return_tensors, ...: they would build huge prompts or tensors) or a field the
    request has its own name for."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise InvalidRequestError(f"{param} must be an object of template variables.", param)
    refused = TOKENIZER_ARGUMENTS | _apply_chat_template_arguments(tokenizer)
    for key in kwargs:
        if not isinstance(key, str) or key in refused or key.startswith("__"):
            hint = f" Use the request's {key} field." if key in _REQUEST_FIELDS else ""
            raise InvalidRequestError(
                f"{param}.{key} is not allowed: {param} are variables of the chat template, and {key!r} is an "
                f"argument of the tokenizer, not a template variable.{hint}",
                f"{param}.{key}",
            )
    return dict(kwargs)


def _template_failure(error: Exception, tokenizer: Any) -> InvalidRequestError:
    """A 400 on ``messages`` for a template that failed: the template's reason (Jinja's error, its
    ``raise_exception`` text), or only the error's type when the reason shows an object's repr or a server path."""
    reason = str(error)
    paths = [
        p for p in (getattr(tokenizer, "name_or_path", None), sys.prefix, os.getcwd()) if p and len(p) > 1
    ]
    if " at 0x" in reason or any(p in reason for p in paths) or not reason:
        reason = type(error).__name__
    return InvalidRequestError(f"The chat template could not be applied to messages: {reason}", "messages")


def _content_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of the messages' text (contents, reasoning, tool-call arguments): a lower bound of the prompt."""
    total = 0
    for m in messages:
        for value in m.values():
            total += len(value) if isinstance(value, str) else len(json.dumps(value)) if value else 0
    return total


def _template_tool_call(call: dict[str, Any]) -> dict[str, Any]:
    """An assistant message's tool call with JSON-string ``arguments`` decoded to an object (if they are JSON)."""
    fn = call.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("arguments"), str):
        return call
    try:
        arguments = json.loads(fn["arguments"])
    except ValueError:
        return call
    return {**call, "function": {**fn, "arguments": arguments}}


def template_messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Messages as plain dicts for the chat template; a list of text parts becomes one string."""
    out = []
    for m in req.messages:
        content = m.content
        if isinstance(content, list):
            content = "\n".join(part.text for part in content)
        msg: dict[str, Any] = {"role": m.role, "content": content if content is not None else ""}
        for key in ("name", "tool_call_id", "reasoning_content"):
            if getattr(m, key) is not None:
                msg[key] = getattr(m, key)
        if m.tool_calls is not None:
            msg["tool_calls"] = [_template_tool_call(c) for c in m.tool_calls]
        out.append(msg)
    return out


def generation_flags(req: ChatCompletionRequest) -> tuple[bool, bool]:
    """(add_generation_prompt, continue_final_message) of a request; 400 when they contradict each other or
    there is no assistant message to continue."""
    if not req.continue_final_message:
        return req.add_generation_prompt is not False, False
    if req.add_generation_prompt:
        raise InvalidRequestError(
            "continue_final_message and add_generation_prompt cannot both be true.", "continue_final_message"
        )
    if req.messages[-1].role != "assistant":
        raise InvalidRequestError(
            "continue_final_message needs the last message to be an assistant message.",
            "continue_final_message",
        )
    return False, True


def render_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    context_len: int | None = None,
) -> str:
    """Messages -> the prompt text of the chat template; 400s: a tokenizer argument in ``template_kwargs``, messages
    longer than ``context_len`` can hold (checked before rendering and after), a template failure."""
    kwargs = check_template_kwargs(template_kwargs, tokenizer)
    if context_len is not None:
        check_text_chars(_content_chars(messages), context_len, "messages")
    if continue_final_message:
        kwargs["continue_final_message"] = True
    try:
        text = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False, **kwargs
        )
    except Exception as e:  # noqa: BLE001 - jinja errors, raise_exception(), missing template: all the user's input
        raise _template_failure(e, tokenizer) from None
    if not isinstance(text, str):
        text = text[0] if isinstance(text, list) and text and isinstance(text[0], str) else None
    if text is None:
        raise InvalidRequestError("The chat template did not render text for messages.", "messages")
    if context_len is not None:
        check_text_chars(len(text), context_len, "messages")
    return text


def apply_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    context_len: int | None = None,
) -> list[int]:
    """Messages -> prompt token ids (with the generation prompt, or the last message left open to continue), as
    the tokenizer's own ``apply_chat_template(tokenize=True)``: the rendered text without added special tokens.

    With ``context_len`` the work is bounded (``input_limits``): a prompt surely over the context is refused
    before it is fully tokenized. Every refusal is a 400 (``messages``, or ``chat_template_kwargs.<key>``).
    """
    text = render_chat_template(
        tokenizer,
        messages,
        tools,
        template_kwargs,
        add_generation_prompt,
        continue_final_message,
        context_len,
    )
    if context_len is None:
        return [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]
    return encode_bounded(tokenizer, text, context_len - 1, context_len, "messages", add_special_tokens=False)


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
