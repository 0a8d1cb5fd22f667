"""The JSON schema that forces tool calls (chat route -> sampling param ``json_schema`` -> the grammar backend).

For ``tool_choice`` "required" and a named function, as SGLang does: the output must be a JSON array of
``{"name": <tool name>, "parameters": <that tool's parameters>}`` objects (one of them for a named function, at
most one when ``parallel_tool_calls`` is false). The ``json_array`` detector then reads it straight into calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["tool_call_json_schema"]

_EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def _call_schema(function: Mapping[str, Any]) -> dict[str, Any]:
    """One call of ``function``: its name (a one-value enum) and its parameters schema."""
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": [function["name"]]},
            "parameters": function.get("parameters") or _EMPTY_PARAMETERS,
        },
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }


def tool_call_json_schema(
    functions: Sequence[Mapping[str, Any]], tool_choice: str | None, parallel_tool_calls: bool = True
) -> dict[str, Any]:
    """The schema for ``tool_choice`` "required" (any of ``functions``) or a function's name (that one only).

    ``functions`` are the ``function`` objects of the request's tools (``{"name", "parameters", ...}``).
    """
    if tool_choice == "required":
        items = [_call_schema(f) for f in functions]
        schema: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "items": items[0] if len(items) == 1 else {"anyOf": items},
        }
        if not parallel_tool_calls:
            schema["maxItems"] = 1
        return schema
    chosen = [f for f in functions if f["name"] == tool_choice]
    if not chosen:
        raise ValueError(f"No tool named {tool_choice!r}.")
    return {"type": "array", "minItems": 1, "maxItems": 1, "items": _call_schema(chosen[0])}
