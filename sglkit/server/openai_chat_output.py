"""Chat answers, parsed (tokenizer manager text -> reasoning + content + tool calls -> ``openai_response``).

Per choice, a ``ChatOutputParser`` first splits reasoning from content (``--reasoning-parser``), then reads tool
calls out of the content (the request's ToolPlan). Whole answers: ``parse_final`` gives the message fields.
Streams: ``on_delta`` / ``finish`` give OpenAI ``delta`` dicts: ``reasoning_content`` and ``content`` pieces and
tool-call deltas exactly as OpenAI streams them: a call's first delta carries ``index``, ``id``, ``type`` and
``function.name`` with empty ``arguments``; later deltas carry ``index`` and ``function.arguments`` fragments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sglkit.server.function_call import FunctionCallParser, ToolCallItem, make_call_id
from sglkit.server.openai_tools import ToolPlan
from sglkit.server.reasoning_parser import THINK_END, THINK_START, ReasoningParser

__all__ = ["ChatOutputOptions", "ChatOutputParser", "chat_output_options", "prompt_opens_reasoning"]

_PROMPT_TAIL_TOKENS = 32


def prompt_opens_reasoning(tokenizer: Any, input_ids: Sequence[int]) -> bool:
    """True when the prompt ends inside an open ``<think>`` (the template started the model's reasoning)."""
    tail = tokenizer.decode(list(input_ids[-_PROMPT_TAIL_TOKENS:]), skip_special_tokens=False)
    return tail.rfind(THINK_START) > tail.rfind(THINK_END)


@dataclass
class ChatOutputOptions:
    """How the answers of one chat request are read (shared by its choices)."""

    reasoning_parser: str | None = None
    force_reasoning: bool = False
    stream_reasoning: bool = True
    tool_parser: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    parallel_tool_calls: bool = True

    def new_parser(self) -> ChatOutputParser:
        """A fresh parser for one choice."""
        return ChatOutputParser(self)


def chat_output_options(
    plan: ToolPlan,
    reasoning_parser: str | None,
    separate_reasoning: bool,
    stream_reasoning: bool,
    force_reasoning: bool,
) -> ChatOutputOptions | None:
    """The options for a request, or None when its answers are plain content. Forced tool calls (a JSON array
    from the first token) are never reasoning."""
    reasoning = reasoning_parser if separate_reasoning and plan.json_schema is None else None
    if reasoning is None and plan.parser is None:
        return None
    return ChatOutputOptions(
        reasoning_parser=reasoning,
        force_reasoning=force_reasoning,
        stream_reasoning=stream_reasoning,
        tool_parser=plan.parser,
        tools=plan.template_tools or [],
        parallel_tool_calls=plan.parallel_tool_calls,
    )


class ChatOutputParser:
    """Reads one choice's answer into reasoning, content and tool calls (whole or streamed)."""

    def __init__(self, options: ChatOutputOptions) -> None:
        self.options = options
        self.reasoning = (
            ReasoningParser(options.reasoning_parser, options.stream_reasoning, options.force_reasoning)
            if options.reasoning_parser
            else None
        )
        self.tools = FunctionCallParser(options.tools, options.tool_parser) if options.tool_parser else None
        self.call_ids: dict[int, str] = {}

    @property
    def has_tool_calls(self) -> bool:
        """True once a tool call was read."""
        return bool(self.call_ids)

    def finish_reason(self, reason: str | None) -> str | None:
        """``tool_calls`` instead of ``stop`` when the answer made calls."""
        return "tool_calls" if reason == "stop" and self.has_tool_calls else reason

    def parse_final(self, text: str) -> dict[str, Any]:
        """A whole answer -> ``{"content", "reasoning_content", "tool_calls"}`` (content None when only calls)."""
        reasoning, content = self.reasoning.parse_non_stream(text) if self.reasoning else (None, text)
        calls: list[dict[str, Any]] | None = None
        if self.tools is not None:
            content, items = self.tools.parse_non_stream(content)
            calls = [self._whole_call(item) for item in items if self._wanted(item)] or None
        if calls and not content:
            content = None
        return {"content": content, "reasoning_content": reasoning, "tool_calls": calls}

    def on_delta(self, text: str) -> list[dict[str, Any]]:
        """The next piece of the answer -> delta dicts (possibly none)."""
        if not text:
            return []
        reasoning, content = self.reasoning.parse_stream_chunk(text) if self.reasoning else ("", text)
        return self._deltas(reasoning, content)

    def finish(self) -> list[dict[str, Any]]:
        """End of the answer -> the delta dicts of what was held back."""
        reasoning, content = self.reasoning.finish() if self.reasoning else ("", "")
        deltas = self._deltas(reasoning, content)
        if self.tools is not None:
            normal, items = self.tools.finish()
            deltas += self._tool_deltas(normal, items)
        return deltas

    # ------------------------------------------------------------------ helpers
    def _wanted(self, item: ToolCallItem) -> bool:
        return self.options.parallel_tool_calls or item.tool_index == 0

    def _whole_call(self, item: ToolCallItem) -> dict[str, Any]:
        self.call_ids[item.tool_index] = call_id = make_call_id()
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": item.name, "arguments": item.parameters},
        }

    def _deltas(self, reasoning: str, content: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"reasoning_content": reasoning}] if reasoning else []
        if content:
            if self.tools is None:
                out.append({"content": content})
            else:
                out += self._tool_deltas(*self.tools.parse_stream_chunk(content))
        return out

    def _tool_deltas(self, normal: str, items: list[ToolCallItem]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"content": normal}] if normal else []
        for item in items:
            if not self._wanted(item):
                continue
            index = item.tool_index
            if item.name is not None:
                self.call_ids[index] = call_id = make_call_id()
                first = {"index": index, "id": call_id, "type": "function"}
                out.append({"tool_calls": [{**first, "function": {"name": item.name, "arguments": ""}}]})
                continue
            last = out[-1]["tool_calls"][0] if out and "tool_calls" in out[-1] else None
            if last is not None and last["index"] == index and "id" not in last:
                last["function"]["arguments"] += item.parameters
            else:
                out.append({"tool_calls": [{"index": index, "function": {"arguments": item.parameters}}]})
        return out
