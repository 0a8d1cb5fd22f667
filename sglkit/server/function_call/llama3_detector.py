"""Llama 3.1 / 3.2 / 3.3 JSON tool calls (a detector of ``FunctionCallParser``).

``{"name": ..., "parameters": {...}}`` objects, either at the very start of the output or after the
``<|python_tag|>`` token; several calls are separated by ``;``. Anything else after the calls is normal text. An
object at the start that is not a call (no ``name``, or an unknown tool) stays normal text.
"""

from __future__ import annotations

from sglkit.server.function_call.base_detector import (
    BaseFormatDetector,
    ItemProgress,
    find_token,
    parse_json_call,
)
from sglkit.server.function_call.partial_json import skip_ws

__all__ = ["Llama3Detector"]


class Llama3Detector(BaseFormatDetector):
    """``<|python_tag|>{"name": "f", "parameters": {...}}; {"name": "g", "parameters": {...}}``."""

    name = "llama3"
    start_token = "<|python_tag|>"
    separator = ";"

    def find_start(self, text: str, pos: int, at_output_start: bool) -> tuple[int, int | None] | None:
        """``{`` as the first character of the output, else a ``<|python_tag|>`` token anywhere."""
        if at_output_start:
            j = skip_ws(text, pos)
            if j < len(text) and text[j] == "{":
                return j, j
        return find_token(text, pos, self.start_token)

    def parse_item(self, text: str, pos: int) -> ItemProgress:
        """One JSON call object (``parameters`` or ``arguments``)."""
        return parse_json_call(text, pos)
