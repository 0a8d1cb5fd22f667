"""Prompt building (OpenAI request model -> prompt, before ``openai_request`` turns the request into a GenerateInput).

Chat: ``messages`` -> plain dicts -> the tokenizer's chat template -> prompt token ids (with the generation prompt; a
template failure is a 400 on ``messages``). Completions: the text of each prompt (token prompts decoded), which
``echo`` prepends to the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.protocol import ChatCompletionRequest, CompletionRequest

_RESERVED_TEMPLATE_KWARGS = frozenset(
    {"conversation", "tools", "tokenize", "add_generation_prompt", "return_dict", "chat_template"}
)


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
    tokenizer: Any,
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
