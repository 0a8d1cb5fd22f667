"""Prompt building (OpenAI request model -> prompt, before ``openai_request`` turns the request into a GenerateInput).

Chat: ``messages`` -> plain dicts -> the tokenizer's chat template -> prompt token ids (with the generation prompt,
or continuing the final assistant message; a template failure is a 400 on ``messages``). Tool-call arguments sent
as JSON strings reach the template as objects (as in SGLang and vLLM: templates render them with ``tojson``).
Completions: the text of each prompt (token prompts decoded), which ``echo`` prepends to the answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.protocol import ChatCompletionRequest, CompletionRequest

_RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation",
        "tools",
        "tokenize",
        "add_generation_prompt",
        "continue_final_message",
        "return_dict",
        "chat_template",
    }
)


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


def apply_chat_template(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list | None = None,
    template_kwargs: Mapping[str, Any] | None = None,
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
) -> list[int]:
    """Messages -> prompt token ids (with the generation prompt, or the last message left open to continue); a
    template failure is a 400 on ``messages``."""
    kwargs = {k: v for k, v in (template_kwargs or {}).items() if k not in _RESERVED_TEMPLATE_KWARGS}
    if continue_final_message:
        kwargs["continue_final_message"] = True
    try:
        out = tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=True, **kwargs
        )
    except Exception as e:  # noqa: BLE001 - jinja errors, raise_exception(), missing template: all the user's input
        raise InvalidRequestError(
            f"The chat template could not be applied to messages: {e}", "messages"
        ) from None
    ids = out["input_ids"] if isinstance(out, Mapping) else out
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(t) for t in ids]


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
