"""Pythonic tool calls (a detector of ``FunctionCallParser``): ``[get_weather(city="Paris"), add(a=1, b=2)]``.

A Python list of calls with keyword arguments whose values are literals (Llama 3.2 / 3.3 / 4 with a pythonic
template). Each call is parsed with ``ast`` and its values with ``ast.literal_eval``: nothing is ever evaluated.
A call's name and arguments are sent together, once the call's closing parenthesis has arrived.
"""

from __future__ import annotations

import ast
import json
import re

from sglkit.server.function_call.base_detector import BaseFormatDetector, ItemProgress

__all__ = ["PythonicDetector", "parse_python_call"]

_LIST_HEAD = re.compile(r"\[\s*[A-Za-z_][\w.]*\s*\(")
_LIST_HEAD_PARTIAL = re.compile(r"\[\s*(?:[A-Za-z_][\w.]*\s*)?")
_CALL_HEAD = re.compile(r"\s*[A-Za-z_][\w.]*\s*\(")
_CALL_HEAD_PARTIAL = re.compile(r"\s*(?:[A-Za-z_][\w.]*\s*)?")
_OPEN, _CLOSE = "([{", ")]}"


def _call_end(text: str, i: int) -> int | None:
    """Index after the ``)`` closing the call whose ``(`` is just before ``text[i]``; None if not there yet."""
    depth, k = 1, i
    while k < len(text):
        c = text[k]
        if c in "'\"":
            k += 1
            while k < len(text) and text[k] != c:
                k += 2 if text[k] == "\\" else 1
            if k >= len(text):
                return None
        elif c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return k + 1
        k += 1
    return None


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise ValueError("a call's function must be a name")


def parse_python_call(source: str) -> tuple[str, dict]:
    """``f(a=1, b="x")`` -> ``("f", {"a": 1, "b": "x"})``; ValueError for anything but keyword literals."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"not a Python call: {e}") from None
    if not isinstance(node, ast.Call) or node.args:
        raise ValueError("expected a call with keyword arguments only")
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError("**kwargs are not allowed")
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"the value of {kw.arg} is not a literal") from None
    try:
        json.dumps(args)
    except (TypeError, ValueError):
        raise ValueError("argument values must be JSON values") from None
    return _dotted(node.func), args


class PythonicDetector(BaseFormatDetector):
    """``[f(a=1), g(b="x")]`` anywhere in the output."""

    name = "pythonic"
    open_token = "["
    separator = ","
    close_token = "]"

    def find_start(self, text: str, pos: int, at_output_start: bool) -> tuple[int, int | None] | None:
        """A ``[`` followed by a name and ``(``."""
        i = pos
        while (idx := text.find("[", i)) >= 0:
            if _LIST_HEAD.match(text, idx):
                return idx, idx
            if _LIST_HEAD_PARTIAL.fullmatch(text, idx):
                return idx, None
            i = idx + 1
        return None

    def parse_item(self, text: str, pos: int) -> ItemProgress:
        """One call; its name and (canonical JSON) arguments once its ``)`` has arrived."""
        m = _CALL_HEAD.match(text, pos)
        if m is None:
            if _CALL_HEAD_PARTIAL.fullmatch(text, pos):
                return ItemProgress(None, "", False, None)
            raise ValueError("expected a call")
        end = _call_end(text, m.end())
        if end is None:
            return ItemProgress(None, "", False, None)
        name, args = parse_python_call(text[pos:end])
        return ItemProgress(name, json.dumps(args, ensure_ascii=False), True, end)
