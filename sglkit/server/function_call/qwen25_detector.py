"""Qwen2.5 / Hermes tool calls (a detector of ``FunctionCallParser``): ``<tool_call>{json}</tool_call>`` blocks.

Each block holds one ``{"name": ..., "arguments": {...}}`` object; several blocks may follow each other. Text
before, between and after the blocks is normal text.
"""

from __future__ import annotations

from sglkit.server.function_call.base_detector import (
    BaseFormatDetector,
    ItemProgress,
    find_token,
    parse_json_call,
)

__all__ = ["Qwen25Detector"]


class Qwen25Detector(BaseFormatDetector):
    """``<tool_call>\\n{"name": "f", "arguments": {...}}\\n</tool_call>`` (Qwen2.5, Qwen3, Hermes 2/3, QwQ)."""

    name = "qwen25"
    start_token = "<tool_call>"
    close_token = "</tool_call>"

    def find_start(self, text: str, pos: int, at_output_start: bool) -> tuple[int, int | None] | None:
        """A ``<tool_call>`` token anywhere."""
        return find_token(text, pos, self.start_token)

    def parse_item(self, text: str, pos: int) -> ItemProgress:
        """One JSON call object."""
        return parse_json_call(text, pos)
