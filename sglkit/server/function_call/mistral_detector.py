"""Mistral tool calls (a detector of ``FunctionCallParser``): ``[TOOL_CALLS] [{json}, {json}]``.

The ``[TOOL_CALLS]`` token, then a JSON array of ``{"name": ..., "arguments": {...}}`` objects (Mistral 7B
Instruct v0.3, Mistral Nemo, Mixtral 8x22B Instruct). Text before the token is normal text.
"""

from __future__ import annotations

from sglkit.server.function_call.base_detector import (
    BaseFormatDetector,
    ItemProgress,
    find_token,
    parse_json_call,
)

__all__ = ["MistralDetector"]


class MistralDetector(BaseFormatDetector):
    """``[TOOL_CALLS] [{"name": "f", "arguments": {...}}, ...]``."""

    name = "mistral"
    start_token = "[TOOL_CALLS]"
    open_token = "["
    separator = ","
    close_token = "]"

    def find_start(self, text: str, pos: int, at_output_start: bool) -> tuple[int, int | None] | None:
        """A ``[TOOL_CALLS]`` token anywhere."""
        return find_token(text, pos, self.start_token)

    def parse_item(self, text: str, pos: int) -> ItemProgress:
        """One JSON call object of the array."""
        return parse_json_call(text, pos)
