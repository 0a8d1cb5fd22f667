"""Tool requests (chat route, before templating): ``tools`` / ``tool_choice`` / legacy ``functions`` -> a ToolPlan.

The plan says what the chat template sees (the tools, or none for ``tool_choice: "none"``), how the output is
read (the model's format detector for ``auto``; the forced JSON array for ``required`` or a named function) and
the JSON schema that forces the calls (the native sampling param ``json_schema``). Refusals are 400s naming the
field: ``tool_choice`` without tools, a named function that is not in ``tools``, duplicate tool names, a tool
whose ``parameters`` is not an object schema, ``functions`` together with ``tools``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError
from sglkit.server.function_call import detect_tool_call_parser, tool_call_json_schema
from sglkit.server.protocol import ChatCompletionRequest, NamedToolChoice, ToolDefinition

__all__ = ["ToolPlan", "add_tool_constraint", "resolve_tool_call_parser", "resolve_tool_plan"]

logger = logging.getLogger("sglkit.server")

FORCED_CALLS_PARSER = "json_array"
"""The detector that reads the JSON array forced by tool_choice required / named."""

_GRAMMAR_PARAMS = ("json_schema", "regex", "ebnf", "structural_tag")


@dataclass
class ToolPlan:
    """What a chat request's tools mean for templating, generation and parsing."""

    template_tools: list[dict[str, Any]] | None = None
    """Tools in OpenAI's shape for the chat template; None when the template should not see tools."""
    functions: list[dict[str, Any]] = field(default_factory=list)
    """The ``function`` objects of the tools (name, description, parameters)."""
    parser: str | None = None
    """Detector that reads calls from the output; None: the output is plain content."""
    json_schema: str | None = None
    """The schema forcing calls (tool_choice required / named), for the ``json_schema`` sampling param."""
    parallel_tool_calls: bool = True
    """False: at most one call per answer."""


def resolve_tool_call_parser(
    configured: str | None, chat_template: str | Mapping[str, str] | None
) -> str | None:
    """``--tool-call-parser`` if set, else the format recognised in the chat template (None if ambiguous)."""
    return configured or detect_tool_call_parser(chat_template)


def _tools_and_choice(req: ChatCompletionRequest) -> tuple[list[ToolDefinition] | None, Any, str]:
    """(tools, tool choice, the field a bad choice is reported under), with legacy functions mapped."""
    tools, choice, choice_field = req.tools, req.tool_choice, "tool_choice"
    if req.functions is not None:
        if tools is not None:
            raise InvalidRequestError("Send tools or the legacy functions, not both.", "functions")
        tools = [ToolDefinition(function=f) for f in req.functions]
    if req.function_call is not None:
        if req.tool_choice is not None:
            raise InvalidRequestError(
                "Send tool_choice or the legacy function_call, not both.", "function_call"
            )
        if req.functions is None:
            raise InvalidRequestError(
                "function_call is only allowed when functions are specified.", "function_call"
            )
        fc = req.function_call
        choice = fc if isinstance(fc, str) else NamedToolChoice(function={"name": fc.name})
        choice_field = "function_call"
    return tools, choice, choice_field


def resolve_tool_plan(req: ChatCompletionRequest, tool_call_parser: str | None) -> ToolPlan:
    """Validate a chat request's tool fields and plan them; ``tool_call_parser`` reads ``auto`` outputs."""
    tools, choice, choice_field = _tools_and_choice(req)
    parallel = req.parallel_tool_calls is not False
    if not tools:
        if choice is not None:
            what = "functions" if choice_field == "function_call" else "tools"
            raise InvalidRequestError(
                f"{choice_field} is only allowed when {what} are specified.", choice_field
            )
        return ToolPlan(parallel_tool_calls=parallel)
    tools_field = "functions" if req.functions is not None else "tools"
    functions = [t.function.model_dump(exclude_none=True) for t in tools]
    seen: set[str] = set()
    for i, fn in enumerate(functions):
        if fn["name"] in seen:
            raise InvalidRequestError(
                f"Tool names must be unique; {fn['name']!r} appears twice.", tools_field
            )
        seen.add(fn["name"])
        params = fn.get("parameters")
        if params is not None and params.get("type", "object") != "object":
            raise InvalidRequestError(
                f"{tools_field}[{i}] parameters must be a JSON schema of type 'object'.", tools_field
            )
    choice = choice or "auto"
    if choice == "none":
        return ToolPlan(None, functions, None, None, parallel)
    template_tools = [{"type": "function", "function": fn} for fn in functions]
    if choice == "auto":
        return ToolPlan(template_tools, functions, tool_call_parser, None, parallel)
    name = "required" if choice == "required" else choice.function.name
    if name != "required" and name not in seen:
        raise InvalidRequestError(
            f"{choice_field} names the function {name!r}, which is not in {tools_field} "
            f"({', '.join(sorted(seen))}).",
            choice_field,
        )
    schema = tool_call_json_schema(functions, name, parallel)
    return ToolPlan(template_tools, functions, FORCED_CALLS_PARSER, json.dumps(schema), parallel)


def add_tool_constraint(inp: GenerateInput, plan: ToolPlan, choice_field: str = "tool_choice") -> None:
    """Put the plan's forcing schema into the sampling params (400 if the request already has a grammar)."""
    if plan.json_schema is None:
        return
    params = inp.sampling_params
    taken = [name for name in _GRAMMAR_PARAMS if params.get(name) is not None]
    if taken:
        raise InvalidRequestError(
            f"tool_choice 'required' or a named function cannot be combined with {taken[0]} "
            "(or response_format): both constrain the output.",
            choice_field,
        )
    params["json_schema"] = plan.json_schema
