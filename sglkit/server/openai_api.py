"""OpenAI-compatible routes (HTTP edge -> tokenizer manager): /v1/models, /v1/chat/completions, /v1/completions.

Each route: raw body -> ``protocol`` model -> ``openai_request`` (to a GenerateInput) ->
``TokenizerManager.tokenize`` -> ``run`` -> ``openai_response`` / ``openai_logprobs`` -> a JSON answer, or SSE
events ending in ``data: [DONE]``. Errors before the stream starts are regular error answers (see ``errors``);
errors after it started are one in-band ``data: {"error": {...}}`` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from sglkit.core.messages import TokenizedGenerateReq
from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError
from sglkit.runtime.frontend.token_only import require_tokenizer
from sglkit.server.errors import OpenAIError, error_body, error_type_for
from sglkit.server.openai_chat_output import ChatOutputOptions, chat_output_options, prompt_opens_reasoning
from sglkit.server.openai_fields import check_openai_fields
from sglkit.server.openai_logprobs import TokenText
from sglkit.server.openai_prompt import apply_chat_template, generation_flags, prompt_texts, template_messages
from sglkit.server.openai_request import (
    chat_to_generate_input,
    check_supported,
    completion_to_generate_input,
    model_error,
    param_names,
    to_public_error,
)
from sglkit.server.openai_response import (
    ChatStreamFormatter,
    CompletionStreamFormatter,
    build_chat_response,
    build_completion_response,
)
from sglkit.server.openai_tools import (
    add_tool_constraint,
    resolve_tool_call_parser,
    resolve_tool_plan,
)
from sglkit.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    SamplingRequest,
    parse_json_object,
    validate_request,
)
from sglkit.server.tokenizer_manager import ServerUnavailableError

logger = logging.getLogger("sglkit.server")

router = APIRouter()


# ----------------------------------------------------------------------------- helpers
def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _model_card(request: Request) -> ModelCard:
    tm, args = request.app.state.tokenizer_manager, request.app.state.server_args
    return ModelCard(
        id=args.served_model_name, created=int(time.time()), root=tm.model_path, max_model_len=tm.context_len
    )


def _response_id(req: SamplingRequest, reqs: list[TokenizedGenerateReq]) -> str:
    """The user's ``rid``, else the one request's id (as SGLang), else a fresh id for the n / batch family."""
    if req.rid:
        return req.rid
    return reqs[0].rid if len(reqs) == 1 else uuid.uuid4().hex


def _model_paths(request: Request) -> list[str]:
    return [
        p
        for p in (request.app.state.server_args.model_path, request.app.state.tokenizer_manager.model_path)
        if p
    ]


async def _parse(request: Request, model: type[SamplingRequest]) -> SamplingRequest:
    """Body -> request model, then the checks every OpenAI generation route shares."""
    body = parse_json_object(await request.body())
    check_openai_fields(body, model)
    req = validate_request(model, body)
    check_served(request, req)
    return req


def check_served(request: Request, req: SamplingRequest) -> None:
    """The checks after validation: a generation model, the served ``model`` name, supported features."""
    args = request.app.state.server_args
    if getattr(args, "is_embedding", False):
        raise OpenAIError(400, "This model is an embedding model; use /v1/embeddings.", "model")
    message = model_error(req.model, args.served_model_name, _model_paths(request))
    if message:
        raise OpenAIError(400, message, "model", code="model_not_found")
    check_supported(req)


async def _tokenize(
    tm, inp: GenerateInput, names: dict[str, str], prompt_param: str
) -> tuple[list[TokenizedGenerateReq], list[int]]:
    """GenerateInput -> requests; every refusal is a 400 in OpenAI names (context length: its OpenAI code)."""
    try:
        _, reqs, owners = await tm.tokenize(inp)
    except InvalidRequestError as e:
        err = to_public_error(e, names)
        code = "context_length_exceeded" if "context length" in str(err) else None
        raise OpenAIError(400, str(err), err.param, code=code) from None
    for r in reqs:
        if len(r.input_ids) + 1 > tm.max_total_num_tokens:
            raise OpenAIError(
                400,
                f"The input ({len(r.input_ids)} tokens) does not fit in the KV cache "
                f"({tm.max_total_num_tokens} tokens).",
                prompt_param,
            )
    tm.check_new_rids(reqs)  # a 400 before a stream starts (streams would report it in-band)
    return reqs, owners


async def collect_finals(tm, reqs: list[TokenizedGenerateReq], request: Request) -> list[dict[str, Any]]:
    """Run non-streaming requests; the final chunk of each, in order. A failed request is an error answer."""
    finals: list[dict[str, Any] | None] = [None] * len(reqs)
    async for chunk in tm.run(reqs, request=request):
        finals[chunk["index"]] = chunk
    for chunk in finals:
        if chunk is None:
            raise OpenAIError(500, "The request was cancelled before it finished.")
        if chunk["error"]:
            raise OpenAIError(chunk["error_status"], chunk["error"])
    return finals  # type: ignore[return-value]


async def _stream(
    tm,
    reqs: list[TokenizedGenerateReq],
    request: Request,
    on_chunk: Callable[[dict], list[dict]],
    usage_event: Callable[[], dict] | None,
) -> AsyncIterator[str]:
    """SSE events of a generation; an error after the 200 is one in-band error event; always ends in [DONE]."""
    try:
        async with aclosing(tm.run(reqs, request=request)) as chunks:
            async for chunk in chunks:
                if chunk["error"]:
                    status = chunk["error_status"]
                    yield _sse(error_body(chunk["error"], error_type_for(status), None, status))
                    break
                for event in on_chunk(chunk):
                    yield _sse(event)
            else:
                if usage_event is not None:
                    yield _sse(usage_event())
    except ServerUnavailableError as e:
        yield _sse(error_body(str(e), "server_error", None, 503))
    except Exception:  # noqa: BLE001 - the 200 is sent: report in-band, log once
        logger.exception("Error while streaming an OpenAI response")
        yield _sse(error_body("Internal server error.", "server_error", None, 500))
    yield "data: [DONE]\n\n"


def _sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ----------------------------------------------------------------------------- routes
@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The served model: ``{"object": "list", "data": [{"id", "object", "created", "owned_by", "root",
    "max_model_len"}]}``."""
    return ModelList(data=[_model_card(request)]).model_dump()


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    """One model card; 404 ``model_not_found`` for a name this server does not serve."""
    served = request.app.state.server_args.served_model_name
    if model_error(model_id, served, _model_paths(request)):
        raise OpenAIError(
            404,
            f"The model {model_id!r} does not exist. This server serves {served!r}.",
            "model",
            code="model_not_found",
        )
    return _model_card(request).model_dump()


def _tool_call_parser(request: Request) -> str | None:
    """``--tool-call-parser``, else the format recognised in the chat template (worked out once)."""
    state = request.app.state
    if not hasattr(state, "tool_call_parser"):
        tm = state.tokenizer_manager
        state.tool_call_parser = resolve_tool_call_parser(
            getattr(state.server_args, "tool_call_parser", None), getattr(tm.tokenizer, "chat_template", None)
        )
    return state.tool_call_parser


@dataclass
class PreparedChat:
    """A chat request ready to run: its tokenized requests, their prompt owners, how the answers are read."""

    reqs: list[TokenizedGenerateReq]
    owners: list[int]
    output: ChatOutputOptions | None


async def prepare_chat(request: Request, req: ChatCompletionRequest) -> PreparedChat:
    """A validated chat request -> templated and tokenized requests (every refusal a 400 naming the field).

    Shared by ``/v1/chat/completions`` and ``/v1/responses`` (which converts its input to chat messages)."""
    tm = request.app.state.tokenizer_manager
    if not tm.alive:
        raise ServerUnavailableError("The server is unhealthy: the scheduler process died.")
    require_tokenizer(tm.tokenizer, request.url.path, "messages")  # chat templates need the tokenizer
    plan = resolve_tool_plan(req, _tool_call_parser(request))
    add_prompt, continue_final = generation_flags(req)
    try:
        input_ids = await asyncio.to_thread(
            apply_chat_template,
            tm.tokenizer,
            template_messages(req),
            plan.template_tools,
            req.chat_template_kwargs,
            add_prompt,
            continue_final,
            tm.context_len,
        )
    except InvalidRequestError as e:  # bounded templating: a prompt over the context is refused here
        code = "context_length_exceeded" if "context length" in str(e) else None
        raise OpenAIError(400, str(e), e.param, code=code) from None
    inp = chat_to_generate_input(req, input_ids, min(tm.context_len, tm.max_total_num_tokens))
    add_tool_constraint(inp, plan, "function_call" if req.function_call is not None else "tool_choice")
    names = param_names(req)
    if plan.json_schema is not None:
        names["json_schema"] = "functions" if req.functions is not None else "tools"
    reqs, owners = await _tokenize(tm, inp, names, "messages")
    reasoning_parser = getattr(request.app.state.server_args, "reasoning_parser", None)
    output = chat_output_options(
        plan,
        reasoning_parser,
        req.separate_reasoning,
        req.stream_reasoning,
        bool(reasoning_parser) and prompt_opens_reasoning(tm.tokenizer, input_ids),
    )
    return PreparedChat(reqs, owners, output)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions (streaming or not), with SGLang's sampling extras, tool calls
    (``tools``, ``tool_choice``) and reasoning separation (``--reasoning-parser``)."""
    req: ChatCompletionRequest = await _parse(request, ChatCompletionRequest)  # type: ignore[assignment]
    tm = request.app.state.tokenizer_manager
    chat = await prepare_chat(request, req)
    reqs, owners, output = chat.reqs, chat.owners, chat.output
    rid, created, model = (
        _response_id(req, reqs),
        int(time.time()),
        request.app.state.server_args.served_model_name,
    )
    decode = TokenText(tm.tokenizer) if req.logprobs else None
    if req.stream:
        formatter = ChatStreamFormatter(rid, created, model, owners, decode, bool(req.logprobs), output)
        usage = formatter.usage_event if req.include_usage else None
        return _sse_response(_stream(tm, reqs, request, formatter.on_chunk, usage))
    finals = await collect_finals(tm, reqs, request)
    return JSONResponse(
        build_chat_response(rid, created, model, finals, owners, decode, bool(req.logprobs), output)
    )


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """OpenAI (legacy) text completions: one or many prompts, text or token ids, echo, logprobs, streaming."""
    req: CompletionRequest = await _parse(request, CompletionRequest)  # type: ignore[assignment]
    tm = request.app.state.tokenizer_manager
    require_tokenizer(tm.tokenizer, "/v1/completions", "prompt")  # its answers are text, even for token ids
    inp = completion_to_generate_input(req)
    reqs, owners = await _tokenize(tm, inp, param_names(req), "prompt")
    echo_texts = None
    if req.echo:
        echo_texts = await asyncio.to_thread(
            prompt_texts, req, lambda ids: tm.tokenizer.decode(ids, skip_special_tokens=True)
        )
    rid, created, model = (
        _response_id(req, reqs),
        int(time.time()),
        request.app.state.server_args.served_model_name,
    )
    decode = TokenText(tm.tokenizer) if req.logprobs is not None else None
    if req.stream:
        formatter = CompletionStreamFormatter(rid, created, model, owners, echo_texts, decode, req.logprobs)
        usage = formatter.usage_event if req.include_usage else None
        return _sse_response(_stream(tm, reqs, request, formatter.on_chunk, usage))
    finals = await collect_finals(tm, reqs, request)
    return JSONResponse(
        build_completion_response(rid, created, model, finals, owners, echo_texts, decode, req.logprobs)
    )
