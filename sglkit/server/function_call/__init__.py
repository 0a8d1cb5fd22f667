"""Tool calling (chat route, after generation): detect tool calls in a model's output, whole or streamed.

``FunctionCallParser(tools, name)`` picks a format detector (``qwen25``/``hermes``, ``llama3``, ``mistral``,
``pythonic``); ``detect_tool_call_parser`` recognises one from a chat template; ``tool_choice`` builds the JSON
schema that forces calls for ``tool_choice`` "required" or a named function.
"""

from sglkit.server.function_call.core_types import StreamingParseResult, ToolCallItem, make_call_id
from sglkit.server.function_call.function_call_parser import (
    TOOL_CALL_PARSERS,
    FunctionCallParser,
    detect_tool_call_parser,
)
from sglkit.server.function_call.tool_choice import tool_call_json_schema

__all__ = [
    "TOOL_CALL_PARSERS",
    "FunctionCallParser",
    "StreamingParseResult",
    "ToolCallItem",
    "detect_tool_call_parser",
    "make_call_id",
    "tool_call_json_schema",
]
