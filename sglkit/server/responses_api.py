"""OpenAI Responses API routes (HTTP edge -> the chat path of ``openai_api`` -> ``responses_output``).

``POST /v1/responses``: body -> ``responses_protocol`` (refused fields, the request model, input items -> chat
messages after the stored conversation of ``previous_response_id``) -> ``openai_api.prepare_chat`` (template,
tools, structured output, tokenize: the same code as ``/v1/chat/completions``) -> run -> a ``response`` object, or
SSE events (``responses_output.ResponseEvents``). Refusals name the Responses field (``input``,
``max_output_tokens``, ``text.format``), never the chat one. A failure after the stream started is a
``response.failed`` event carrying ``error``. With ``store`` (the default) the response is kept in a bounded LRU
(``responses_store``): ``GET`` / ``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``; cancel
answers 400 (nothing runs in the background).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.errors import OpenAIError, error_type_for
from sglkit.server.openai_api import PreparedChat, check_served, collect_finals, prepare_chat
from sglkit.server.protocol import parse_json_object, validate_request
from sglkit.server.responses_output import (
    ResponseEvents,
    ResponseHead,
    conversation_turn,
    new_id,
    output_items,
    status_of,
    usage_object,
)
from sglkit.server.responses_protocol import (
    ResponsesRequest,
    check_responses_fields,
    public_param,
    to_chat_request,
)
from sglkit.server.responses_store import ResponseStore, StoredResponse
from sglkit.server.tokenizer_manager import ServerUnavailableError

logger = logging.getLogger("sglkit.server")

router = APIRouter()


def response_store(request: Request) -> ResponseStore:
    """The server's stored responses (made on first use)."""
    state = request.app.state
    if not hasattr(state, "responses_store"):
        state.responses_store = ResponseStore()
    return state.responses_store


def _not_found(response_id: str) -> OpenAIError:
    return OpenAIError(404, f"Response with id '{response_id}' not found.", "response_id")


def _stored(request: Request, response_id: str) -> StoredResponse:
    entry = response_store(request).get(response_id)
    if entry is None:
        raise _not_found(response_id)
    return entry


def _echo(req: ResponsesRequest) -> dict[str, Any]:
    """The request's settings as every ``response`` object repeats them."""
    choice = req.tool_choice or "auto"
    return {
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": None,
        "metadata": req.metadata or {},
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
        "service_tier": "default",
        "store": req.stored,
        "temperature": req.temperature,
        "text": {"format": (req.text.format if req.text else None) or {"type": "text"}},
        "tool_choice": choice if isinstance(choice, str) else choice.model_dump(),
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "top_logprobs": 0,
        "top_p": req.top_p,
        "truncation": "disabled",
        "user": req.user,
    }


def _input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input as Responses items, each with an id (for ``/input_items``)."""
    if isinstance(req.input, str):
        part = {"type": "input_text", "text": req.input}
        return [
            {"type": "message", "role": "user", "content": [part], "id": new_id("msg"), "status": "completed"}
        ]
    items = []
    for item in req.input:
        kind = item.get("type", "message")
        prefix = {"function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}.get(kind, "msg")
        items.append({"type": kind, **item, "id": item.get("id") or new_id(prefix)})
    return items


async def _prepare(request: Request, req: ResponsesRequest, rid: str) -> tuple[PreparedChat, list[dict]]:
    """The chat run of a Responses request and its conversation; refusals in the Responses names."""
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        previous = response_store(request).get(req.previous_response_id)
        if previous is None:
            raise InvalidRequestError(
                f"Previous response with id '{req.previous_response_id}' not found.", "previous_response_id"
            )
        history = previous.conversation
    try:
        chat, conversation = to_chat_request(req, history, rid)
        check_served(request, chat)
        return await prepare_chat(request, chat), conversation
    except InvalidRequestError as e:
        raise InvalidRequestError(public_param(str(e)), public_param(e.param)) from None
    except OpenAIError as e:
        raise OpenAIError(
            e.status, public_param(e.message), public_param(e.param), e.err_type, e.code
        ) from None


@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    """OpenAI Responses: ``input`` (text or items) -> a ``response`` object, or its SSE events when ``stream``."""
    body = parse_json_object(await request.body())
    check_responses_fields(body)
    req: ResponsesRequest = validate_request(ResponsesRequest, body)  # type: ignore[assignment]
    rid = new_id("resp")
    chat, conversation = await _prepare(request, req, rid)
    tm = request.app.state.tokenizer_manager
    head = ResponseHead(rid, request.app.state.server_args.served_model_name, _echo(req))

    def count_tokens(text: str) -> int:
        return len(tm.tokenizer.encode(text, add_special_tokens=False))

    def remember(response: dict[str, Any]) -> None:
        if req.stored:
            turn = conversation_turn(response["output"])
            response_store(request).put(StoredResponse(response, [*conversation, turn], _input_items(req)))

    if req.stream:
        events = _events(tm, chat, request, head, count_tokens, remember)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    (final,) = await collect_finals(tm, chat.reqs, request)
    fields = (
        chat.output.new_parser().parse_final(final["text"]) if chat.output else {"content": final["text"]}
    )
    status, details = status_of(final["meta_info"])
    reasoning = fields.get("reasoning_content")
    usage = usage_object(final["meta_info"], count_tokens(reasoning) if reasoning else 0)
    response = head.object(status, output_items(fields, status), usage, incomplete_details=details)
    remember(response)
    return JSONResponse(response)


async def _events(
    tm,
    chat: PreparedChat,
    request: Request,
    head: ResponseHead,
    count_tokens: Callable[[str], int],
    remember: Callable[[dict[str, Any]], None],
) -> AsyncIterator[str]:
    """The SSE events of a streamed response; a failure after the start is ``response.failed``."""
    writer = ResponseEvents(head)
    parser = chat.output.new_parser() if chat.output else None
    for event in writer.start():
        yield event
    try:
        async with aclosing(tm.run(chat.reqs, request=request)) as chunks:
            async for chunk in chunks:
                if chunk["error"]:
                    events, _ = writer.fail(chunk["error"], error_type_for(chunk["error_status"]))
                    for event in events:
                        yield event
                    return
                if parser is None:
                    deltas = [{"content": chunk["delta"]}] if chunk["delta"] else []
                else:
                    deltas = parser.on_delta(chunk["delta"]) + (parser.finish() if chunk["finished"] else [])
                for event in writer.on_deltas(deltas):
                    yield event
                if chunk["finished"]:
                    events, response = writer.finish(chunk["meta_info"], count_tokens)
                    remember(response)
                    for event in events:
                        yield event
                    return
    except ServerUnavailableError as e:
        failure = writer.fail(str(e), "server_error")[0]
    except Exception:  # noqa: BLE001 - the 200 is sent: report in-band, log once
        logger.exception("Error while streaming a /v1/responses answer")
        failure = writer.fail("Internal server error.", "server_error")[0]
    else:
        return
    for event in failure:
        yield event


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, request: Request) -> dict[str, Any]:
    """A stored response; 404 for an id never stored (``store`` false), deleted or forgotten by the LRU."""
    return _stored(request, response_id).response


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    """Forget a stored response: ``{"id", "object": "response.deleted", "deleted": true}``; 404 if unknown."""
    if not response_store(request).delete(response_id):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response.deleted", "deleted": True}


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, request: Request) -> Response:
    """Only background responses can be cancelled, and sglkit runs none: 400 for a stored id, 404 otherwise."""
    _stored(request, response_id)
    raise OpenAIError(
        400,
        "Only responses created with background=true can be cancelled; sglkit does not run background responses.",
        "response_id",
    )


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    request: Request,
    order: Literal["asc", "desc"] = "desc",
    limit: int = Query(20, ge=1, le=100),
    after: str | None = None,
) -> dict[str, Any]:
    """The input items of a stored response (a page: ``order`` desc by default, ``limit``, ``after`` an id)."""
    items = list(_stored(request, response_id).input_items)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequestError(f"after: no input item with id '{after}' in this response.", "after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }
