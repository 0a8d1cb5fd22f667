"""Tool-call parsing types (model text -> detector -> these -> the OpenAI ``tool_calls`` of a chat answer)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StreamingParseResult", "ToolCallItem", "make_call_id", "tool_names"]


@dataclass
class ToolCallItem:
    """One tool call, or one streamed piece of it.

    ``tool_index`` is the call's position among the calls of one answer (OpenAI's ``index``). Whole calls (the
    non-streamed parse) carry ``name`` and the complete ``parameters`` (a JSON string). Streamed pieces: the first
    piece of a call carries ``name`` and ``parameters == ""``; later pieces carry ``name=None`` and the next
    fragment of ``parameters``. The fragments of a call add up to the non-streamed ``parameters``.
    """

    tool_index: int
    name: str | None
    parameters: str = ""


@dataclass
class StreamingParseResult:
    """What a detector made of some text: text that is not a tool call, and tool calls (or pieces of them)."""

    normal_text: str = ""
    calls: list[ToolCallItem] = field(default_factory=list)


def make_call_id() -> str:
    """A fresh tool-call id in OpenAI's shape: ``call_`` and 24 hex digits."""
    return "call_" + uuid.uuid4().hex[:24]


def tool_names(tools: Iterable[Any] | None) -> set[str]:
    """The function names of OpenAI tools given as dicts (``{"type": "function", "function": {"name": ...}}``),
    as objects with ``.function.name``, or as plain names."""
    names: set[str] = set()
    for tool in tools or ():
        if isinstance(tool, str):
            names.add(tool)
        elif isinstance(tool, dict):
            fn = tool.get("function", tool)
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                names.add(fn["name"])
        else:
            names.add(tool.function.name)
    return names
