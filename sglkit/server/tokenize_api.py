"""Tokenizer routes (HTTP edge, the tokenizer manager's tokenizer; never the scheduler): /tokenize, /v1/tokenize,
/detokenize, /v1/detokenize and /tokenizer_info.

Request and response shapes follow SGLang's and vLLM's (the union of both, so clients of either work):

- ``POST /tokenize``: ``prompt`` (a string or a list of strings) or chat ``messages`` (rendered by the chat template,
  as a chat completion would be) -> ``{"tokens", "count", "max_model_len"}`` (+ ``token_strs`` with vLLM's
  ``return_token_strs``). ``add_special_tokens`` defaults to true for a prompt and false for messages (the chat
  template writes its own special tokens).
- ``POST /detokenize``: ``tokens`` (ids, or a list of id lists) -> ``{"text", "prompt"}`` (SGLang names it
  ``text``, vLLM ``prompt``; both carry the same value).
- ``GET /tokenizer_info``: the special tokens, the chat template and the limits, which lm-eval's
  ``local-completions`` probes to use the server's tokenizer instead of downloading one.

Unknown fields are a 400 naming them; tokenization runs off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sglkit.runtime.frontend.input_limits import check_num_inputs, check_text_chars
from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.runtime.frontend.token_only import require_tokenizer
from sglkit.server.errors import OpenAIError
from sglkit.server.openai_prompt import render_chat_template, template_messages
from sglkit.server.openai_request import model_error
from sglkit.server.protocol import Bool, ChatMessage, Int, parse_json_object, validate_request

router = APIRouter()


class TokenizeRequest(BaseModel):
    """Body of ``POST /tokenize`` and ``POST /v1/tokenize``: exactly one of ``prompt`` and ``messages``."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | list[str] | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: Bool | None = Field(
        default=None,
        description="Add the tokenizer's special tokens (e.g. BOS); default true for prompt, false for messages.",
    )
    add_generation_prompt: Bool | None = Field(
        default=None, description="messages: open the assistant's turn (default true, as a chat completion)."
    )
    continue_final_message: Bool | None = Field(
        default=None, description="messages: leave the last (assistant) message open to be continued."
    )
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: Bool | None = Field(default=None, description="Also return each token's string.")


class TokenizeResponse(BaseModel):
    """Answer of /tokenize: ids and counts (lists of them for a list of prompts)."""

    tokens: list[int] | list[list[int]]
    count: int | list[int]
    max_model_len: int
    token_strs: list[str] | list[list[str]] | None = None


class DetokenizeRequest(BaseModel):
    """Body of ``POST /detokenize`` and ``POST /v1/detokenize``."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[Int] | list[list[Int]]
    skip_special_tokens: Bool = True


class DetokenizeResponse(BaseModel):
    """Answer of /detokenize: the text under SGLang's name (``text``) and vLLM's (``prompt``)."""

    text: str | list[str]
    prompt: str | list[str]


# ----------------------------------------------------------------------------- pure functions (tested directly)
def render_messages(tokenizer: Any, req: TokenizeRequest, max_model_len: int | None = None) -> str:
    """``req.messages`` -> the chat template's text; a template failure is a 400 on ``messages``, a tokenizer
    argument in ``chat_template_kwargs`` a 400 naming it, text over ``max_model_len``'s character bound a 400."""
    add_generation_prompt = req.add_generation_prompt
    continue_final = bool(req.continue_final_message)
    if add_generation_prompt is None:
        add_generation_prompt = not continue_final
    if continue_final and add_generation_prompt:
        raise InvalidRequestError(
            "continue_final_message and add_generation_prompt cannot both be true: the first continues the "
            "last message, the second opens a new assistant turn.",
            "continue_final_message",
        )
    if continue_final and req.messages[-1].role != "assistant":
        raise InvalidRequestError(
            "continue_final_message needs the last message to be the assistant's.", "continue_final_message"
        )
    return render_chat_template(
        tokenizer,
        template_messages(req),
        req.tools,
        req.chat_template_kwargs,
        add_generation_prompt,
        continue_final,
        max_model_len,
    )


def tokenize(
    tokenizer: Any, req: TokenizeRequest, max_model_len: int, max_inputs: int | None = None
) -> TokenizeResponse:
    """Tokenize ``req`` (a prompt, a list of prompts, or chat messages); 400 for a bad combination.

    A text may be longer than the context (counting tokens is what /tokenize is for), up to the character bound
    of ``input_limits`` (``MAX_CHARS_PER_TOKEN`` per token of ``max_model_len``); a list holds at most
    ``max_inputs`` prompts (``--max-inputs-per-request``). Both are checked before anything is tokenized.
    """
    if (req.prompt is None) == (req.messages is None):
        param = "prompt" if req.prompt is None else "messages"
        raise InvalidRequestError("Give exactly one of prompt and messages.", param)
    if req.prompt is None:
        add_special = bool(req.add_special_tokens)
        texts, batch = [render_messages(tokenizer, req, max_model_len)], False
    else:
        for name in ("add_generation_prompt", "continue_final_message", "tools", "chat_template_kwargs"):
            if getattr(req, name) is not None:
                raise InvalidRequestError(f"{name} applies to messages, not to prompt.", name)
        add_special = req.add_special_tokens is not False
        batch = isinstance(req.prompt, list)
        texts = req.prompt if batch else [req.prompt]
        check_num_inputs(len(texts), len(texts), max_inputs, "prompt")
        for i, text in enumerate(texts):
            check_text_chars(len(text), max_model_len, "prompt", f"prompt[{i}]" if batch else "")
    ids = [list(tokenizer.encode(text, add_special_tokens=add_special)) for text in texts]
    strs = [tokenizer.convert_ids_to_tokens(row) for row in ids] if req.return_token_strs else None
    return TokenizeResponse(
        tokens=ids if batch else ids[0],
        count=[len(row) for row in ids] if batch else len(ids[0]),
        max_model_len=max_model_len,
        token_strs=None if strs is None else (strs if batch else strs[0]),
    )


def detokenize(tokenizer: Any, req: DetokenizeRequest, vocab_size: int) -> DetokenizeResponse:
    """Decode ``req.tokens``; an id outside ``[0, vocab_size)`` is a 400 naming its place (``tokens[1][0]``)."""
    batch = bool(req.tokens) and isinstance(req.tokens[0], list)
    rows = req.tokens if batch else [req.tokens]
    for i, row in enumerate(rows):
        for j, token_id in enumerate(row):
            if not 0 <= token_id < vocab_size:
                where = f"tokens[{i}][{j}]" if batch else f"tokens[{j}]"
                raise InvalidRequestError(
                    f"Token id {token_id} in {where} is out of vocabulary [0, {vocab_size}).", "tokens"
                )
    texts = [tokenizer.decode(row, skip_special_tokens=req.skip_special_tokens) for row in rows]
    text: str | list[str] = texts if batch else texts[0]
    return DetokenizeResponse(text=text, prompt=text)


def _token_and_id(tokenizer: Any, name: str) -> dict[str, Any]:
    token = getattr(tokenizer, name, None)
    token_id = getattr(tokenizer, f"{name}_id", None) if token is not None else None
    return {name: token if isinstance(token, str) else None, f"{name}_id": token_id}


def tokenizer_info(tokenizer: Any, vocab_size: int, max_model_len: int) -> dict[str, Any]:
    """The served tokenizer's description: class, sizes, special tokens (text and id), chat template."""
    info: dict[str, Any] = {
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": vocab_size,
        "tokenizer_size": len(tokenizer),
        "max_model_len": max_model_len,
        "model_max_length": max_model_len,
    }
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        info.update(_token_and_id(tokenizer, name))
    info["chat_template"] = getattr(tokenizer, "chat_template", None)
    return info


# ----------------------------------------------------------------------------- routes
def _tm(request: Request):
    return request.app.state.tokenizer_manager


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    """Body -> ``model`` (400 naming a bad or unknown field); a ``model`` this server does not serve is a 400."""
    req = validate_request(model, parse_json_object(await request.body()))
    tm, args = _tm(request), request.app.state.server_args
    paths = [p for p in (args.model_path, tm.model_path) if p]
    message = model_error(req.model, args.served_model_name, paths)
    if message:
        raise OpenAIError(400, message, "model", code="model_not_found")
    return req


@router.post("/tokenize")
@router.post("/v1/tokenize")
async def tokenize_route(request: Request) -> dict[str, Any]:
    """Text (or a list of texts, or chat messages) -> token ids: ``{"tokens", "count", "max_model_len"}``."""
    req = await _parse(request, TokenizeRequest)
    tm = _tm(request)
    require_tokenizer(tm.tokenizer, "/tokenize", "messages" if req.messages is not None else "prompt")
    max_inputs = getattr(request.app.state.server_args, "max_inputs_per_request", None)
    out = await asyncio.to_thread(tokenize, tm.tokenizer, req, tm.context_len, max_inputs)
    return out.model_dump(exclude_none=True)


@router.post("/detokenize")
@router.post("/v1/detokenize")
async def detokenize_route(request: Request) -> dict[str, Any]:
    """Token ids (or a list of id lists) -> text: ``{"text", "prompt"}`` (the same value under both names)."""
    req = await _parse(request, DetokenizeRequest)
    tm = _tm(request)
    require_tokenizer(tm.tokenizer, "/detokenize", "tokens")
    return (await asyncio.to_thread(detokenize, tm.tokenizer, req, tm.vocab_size)).model_dump()


@router.get("/tokenizer_info")
@router.get("/v1/tokenizer_info")
async def tokenizer_info_route(request: Request) -> dict[str, Any]:
    """The tokenizer's class, sizes, special tokens and chat template (what lm-eval's remote tokenizer reads)."""
    tm = _tm(request)
    require_tokenizer(tm.tokenizer, "/tokenizer_info")
    return tokenizer_info(tm.tokenizer, tm.vocab_size, tm.context_len)
