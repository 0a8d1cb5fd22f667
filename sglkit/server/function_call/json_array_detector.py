"""The JSON array that ``tool_choice`` "required" / named forces (a detector of ``FunctionCallParser``).

With those choices the output is constrained by a JSON schema (see ``tool_choice``) to exactly
``[{"name": ..., "parameters": {...}}, ...]``, so it is read directly, whatever the model's own format.
"""

from __future__ import annotations

from sglkit.server.function_call.base_detector import BaseFormatDetector, ItemProgress, parse_json_call
from sglkit.server.function_call.partial_json import skip_ws

__all__ = ["JsonArrayDetector"]


class JsonArrayDetector(BaseFormatDetector):
    """``[{"name": "f", "parameters": {...}}, ...]`` at the start of the output."""

    name = "json_array"
    open_token = "["
    separator = ","
    close_token = "]"

    def find_start(self, text: str, pos: int, at_output_start: bool) -> tuple[int, int | None] | None:
        """The array's ``[`` as the first character of the output."""
        j = skip_ws(text, pos)
        if at_output_start and j < len(text) and text[j] == "[":
            return j, j
        return None

    def parse_item(self, text: str, pos: int) -> ItemProgress:
        """One ``{"name", "parameters"}`` object."""
        return parse_json_call(text, pos)
