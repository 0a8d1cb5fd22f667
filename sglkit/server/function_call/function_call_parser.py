"""``FunctionCallParser``: the chat route's one entry to tool-call parsing (model text -> normal text + calls).

Picks the detector by name (``--tool-call-parser``, or the one ``detect_tool_call_parser`` recognises in the chat
template) and keeps the request's tools, so a call to a tool the request did not offer stays text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sglkit.server.function_call.base_detector import BaseFormatDetector
from sglkit.server.function_call.core_types import ToolCallItem
from sglkit.server.function_call.json_array_detector import JsonArrayDetector
from sglkit.server.function_call.llama3_detector import Llama3Detector
from sglkit.server.function_call.mistral_detector import MistralDetector
from sglkit.server.function_call.pythonic_detector import PythonicDetector
from sglkit.server.function_call.qwen25_detector import Qwen25Detector

__all__ = ["DETECTORS", "TOOL_CALL_PARSERS", "FunctionCallParser", "detect_tool_call_parser"]

DETECTORS: dict[str, type[BaseFormatDetector]] = {
    "qwen25": Qwen25Detector,
    "hermes": Qwen25Detector,
    "llama3": Llama3Detector,
    "mistral": MistralDetector,
    "pythonic": PythonicDetector,
    "json_array": JsonArrayDetector,
}
"""Detector by parser name; ``json_array`` is internal (the output forced by tool_choice required / named)."""

TOOL_CALL_PARSERS = ("qwen25", "hermes", "llama3", "mistral", "pythonic")
"""The names ``--tool-call-parser`` accepts."""

_TEMPLATE_MARKERS = {
    "qwen25": ("<tool_call>",),
    "mistral": ("[TOOL_CALLS]",),
    "llama3": ("<|python_tag|>", "<|eom_id|>"),
}


def detect_tool_call_parser(chat_template: str | Mapping[str, str] | None) -> str | None:
    """The parser a chat template's tool-call format needs, when exactly one format's marker is in it.

    ``<tool_call>`` -> qwen25, ``[TOOL_CALLS]`` -> mistral, ``<|python_tag|>`` / ``<|eom_id|>`` -> llama3;
    None when there is no template, no marker or more than one format's markers (then set ``--tool-call-parser``).
    """
    if not chat_template:
        return None
    text = chat_template if isinstance(chat_template, str) else "\n".join(chat_template.values())
    found = [name for name, markers in _TEMPLATE_MARKERS.items() if any(m in text for m in markers)]
    return found[0] if len(found) == 1 else None


class FunctionCallParser:
    """Tool-call parsing of one output with one format (``tool_call_parser``) and the request's ``tools``.

    Whole text: ``parse_non_stream``. Streaming: ``parse_stream_chunk`` per new piece, then ``finish``.
    """

    def __init__(self, tools: Sequence[Any] | None, tool_call_parser: str) -> None:
        if tool_call_parser not in DETECTORS:
            raise ValueError(
                f"Unknown tool call parser {tool_call_parser!r}; choose one of {', '.join(TOOL_CALL_PARSERS)}."
            )
        self.tools = list(tools or [])
        self.tool_call_parser = tool_call_parser
        self.detector = DETECTORS[tool_call_parser]()

    def has_tool_call(self, text: str) -> bool:
        """True when ``text`` contains the start of a tool call in this format."""
        return self.detector.has_tool_call(text)

    def parse_non_stream(self, text: str) -> tuple[str, list[ToolCallItem]]:
        """A whole output -> (normal text, complete calls)."""
        result = self.detector.detect_and_parse(text, self.tools)
        return result.normal_text, result.calls

    def parse_stream_chunk(self, chunk_text: str) -> tuple[str, list[ToolCallItem]]:
        """The next piece of output -> (normal text delta, call pieces)."""
        result = self.detector.parse_streaming_increment(chunk_text, self.tools)
        return result.normal_text, result.calls

    def finish(self) -> tuple[str, list[ToolCallItem]]:
        """End of output -> the normal text that was held back (and no further call pieces)."""
        result = self.detector.finish(self.tools)
        return result.normal_text, result.calls
