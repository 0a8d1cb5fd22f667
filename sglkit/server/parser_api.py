"""Parser routes (HTTP edge, no model involved): ``/parse_function_call`` and ``/separate_reasoning``, as SGLang has.

They run the chat route's parsers on a text the caller already has: ``{"text", "tool_call_parser", "tools"}`` ->
``{"normal_text", "calls": [{"tool_index", "name", "parameters"}]}`` and ``{"text", "reasoning_parser"}`` ->
``{"text", "reasoning_text"}``. A parser left out is the server's (``--tool-call-parser`` or the one recognised in
the chat template; ``--reasoning-parser``); none at all, or an unknown name, is a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.function_call import TOOL_CALL_PARSERS, FunctionCallParser
from sglkit.server.openai_tools import resolve_tool_call_parser
from sglkit.server.protocol import ToolDefinition, parse_json_object, validate_request
from sglkit.server.reasoning_parser import REASONING_PARSERS, ReasoningParser

__all__ = ["ParseFunctionCallReq", "SeparateReasoningReqInput", "router"]

router = APIRouter()


class ParseFunctionCallReq(BaseModel):
    """Body of ``POST /parse_function_call``."""

    model_config = ConfigDict(extra="forbid")
    text: str
    tool_call_parser: str | None = None
    tools: list[ToolDefinition] = Field(default_factory=list)


class SeparateReasoningReqInput(BaseModel):
    """Body of ``POST /separate_reasoning``."""

    model_config = ConfigDict(extra="forbid")
    text: str
    reasoning_parser: str | None = None


@router.post("/parse_function_call")
async def parse_function_call(request: Request) -> dict[str, Any]:
    """Tool calls in a text: ``{"normal_text", "calls": [{"tool_index", "name", "parameters"}]}``
    (``parameters`` a JSON string; calls to tools not in ``tools`` stay in ``normal_text``)."""
    req: ParseFunctionCallReq = validate_request(
        ParseFunctionCallReq, parse_json_object(await request.body())
    )  # type: ignore[assignment]
    name = req.tool_call_parser
    if name is None:
        state = request.app.state
        template = getattr(getattr(state.tokenizer_manager, "tokenizer", None), "chat_template", None)
        name = resolve_tool_call_parser(getattr(state.server_args, "tool_call_parser", None), template)
    if name not in TOOL_CALL_PARSERS:
        raise InvalidRequestError(
            f"tool_call_parser must be one of {', '.join(TOOL_CALL_PARSERS)}"
            + (f", got {name!r}." if name else " (the server has none configured or recognised)."),
            "tool_call_parser",
        )
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    normal_text, calls = FunctionCallParser(tools, name).parse_non_stream(req.text)
    return {"normal_text": normal_text, "calls": [asdict(c) for c in calls]}


@router.post("/separate_reasoning")
async def separate_reasoning(request: Request) -> dict[str, Any]:
    """Reasoning split from a text: ``{"text": the content, "reasoning_text": the reasoning}``."""
    req: SeparateReasoningReqInput = validate_request(  # type: ignore[assignment]
        SeparateReasoningReqInput, parse_json_object(await request.body())
    )
    name = req.reasoning_parser or getattr(request.app.state.server_args, "reasoning_parser", None)
    if name not in REASONING_PARSERS:
        raise InvalidRequestError(
            f"reasoning_parser must be one of {', '.join(REASONING_PARSERS)}"
            + (f", got {name!r}." if name else " (the server has none configured)."),
            "reasoning_parser",
        )
    reasoning, text = ReasoningParser(name).parse_non_stream(req.text)
    return {"text": text, "reasoning_text": reasoning or ""}
