"""Partial JSON (tool-call detectors, between the model's text and the OpenAI ``tool_calls``): a canonical prefix.

``canonical_prefix(text, i)`` reads the JSON value starting at ``text[i]`` as far as the text goes and returns the
longest *stable* prefix of its canonical serialization (``json.dumps(value, ensure_ascii=False)``: ``", "`` and
``": "`` separators), plus the index after the value when it is complete. Stable means that however the text
continues, the canonical form will start with this prefix; so a streaming detector can send the difference
between two calls as an argument fragment, and the fragments of a stream add up to exactly the arguments string
of the non-streamed answer (which is the same function run on the whole text).

What is held back while incomplete: numbers and ``true``/``false``/``null`` (``1`` may become ``12``), a
trailing backslash escape, and a high surrogate waiting for its pair. Invalid JSON raises ``ValueError``.
Control characters inside strings are accepted (escaped on output), as ``json.loads(strict=False)`` does.
"""

from __future__ import annotations

import json
import re

__all__ = ["canonical_prefix", "decode_string", "skip_ws"]

_WS = " \t\n\r"
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_NUMBER_CHARS = frozenset("-+.eE0123456789")
_LITERALS = ("true", "false", "null")
_HEX = frozenset("0123456789abcdefABCDEF")

Prefix = tuple[str, "int | None"]
"""(canonical stable prefix, index after the value or None while it is incomplete)."""


def skip_ws(text: str, i: int) -> int:
    """The first index at or after ``i`` that is not JSON whitespace."""
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def canonical_prefix(text: str, i: int = 0) -> Prefix:
    """Canonical stable prefix of the JSON value at ``text[i:]`` (leading whitespace skipped), and its end."""
    i = skip_ws(text, i)
    if i >= len(text):
        return "", None
    c = text[i]
    if c == "{":
        return _object(text, i)
    if c == "[":
        return _array(text, i)
    if c == '"':
        return _string(text, i)
    if c in "-0123456789":
        return _number(text, i)
    if c in "tfn":
        return _literal(text, i)
    raise ValueError(f"Unexpected character {c!r} at {i} in JSON.")


def decode_string(text: str, i: int) -> tuple[str | None, int | None]:
    """The value of the complete JSON string at ``text[i]`` and the index after it; (None, None) if incomplete."""
    out, end = _string(text, i)
    if end is None:
        return None, None
    return json.loads(out), end


def _string(text: str, i: int) -> Prefix:
    if text[i] != '"':
        raise ValueError(f"Expected a string at {i} in JSON.")
    j, safe = i + 1, i + 1  # text[i+1:safe] holds only whole characters / escapes
    while j < len(text):
        c = text[j]
        if c == '"':
            return json.dumps(_decode(text[i + 1 : j]), ensure_ascii=False), j + 1
        if c == "\\":
            if j + 1 >= len(text):
                break
            if text[j + 1] == "u":
                digits = text[j + 2 : j + 6]
                if any(d not in _HEX for d in digits):
                    raise ValueError(f"Invalid \\u escape at {j} in JSON.")
                if len(digits) < 4:
                    break
                j += 6
            elif text[j + 1] in '"\\/bfnrt':
                j += 2
            else:
                raise ValueError(f"Invalid escape at {j} in JSON.")
        else:
            j += 1
        safe = j
    value = _decode(text[i + 1 : safe])
    if value and "\ud800" <= value[-1] <= "\udbff":  # a high surrogate whose low half has not arrived
        value = value[:-1]
    return json.dumps(value, ensure_ascii=False)[:-1], None


def _decode(body: str) -> str:
    return json.loads('"' + body + '"', strict=False)


def _number(text: str, i: int) -> Prefix:
    j = i
    while j < len(text) and text[j] in _NUMBER_CHARS:
        j += 1
    if j == len(text):
        return "", None  # may go on
    token = text[i:j]
    if not _NUMBER.fullmatch(token):
        raise ValueError(f"Invalid number {token!r} in JSON.")
    return json.dumps(json.loads(token)), j


def _literal(text: str, i: int) -> Prefix:
    rest = text[i : i + 5]
    for lit in _LITERALS:
        if rest.startswith(lit):
            return lit, i + len(lit)
        if lit.startswith(rest) and i + len(rest) == len(text):
            return "", None
    raise ValueError(f"Invalid literal at {i} in JSON.")


def _array(text: str, i: int) -> Prefix:
    out = "["
    j = skip_ws(text, i + 1)
    if j < len(text) and text[j] == "]":
        return "[]", j + 1
    while True:
        value, end = canonical_prefix(text, j)
        out += value
        if end is None:
            return out, None
        j = skip_ws(text, end)
        if j >= len(text):
            return out, None
        if text[j] == "]":
            return out + "]", j + 1
        if text[j] != ",":
            raise ValueError(f"Expected ',' or ']' at {j} in JSON.")
        out += ", "
        j = skip_ws(text, j + 1)
        if j < len(text) and text[j] == "]":
            raise ValueError(f"Trailing comma at {j} in JSON.")


def _object(text: str, i: int) -> Prefix:
    out = "{"
    j = skip_ws(text, i + 1)
    if j < len(text) and text[j] == "}":
        return "{}", j + 1
    while True:
        if j >= len(text):
            return out, None
        key, end = _string(text, j)
        out += key
        if end is None:
            return out, None
        j = skip_ws(text, end)
        if j >= len(text):
            return out, None
        if text[j] != ":":
            raise ValueError(f"Expected ':' at {j} in JSON.")
        out += ": "
        value, end = canonical_prefix(text, j + 1)
        out += value
        if end is None:
            return out, None
        j = skip_ws(text, end)
        if j >= len(text):
            return out, None
        if text[j] == "}":
            return out + "}", j + 1
        if text[j] != ",":
            raise ValueError(f"Expected ',' or '}}' at {j} in JSON.")
        out += ", "
        j = skip_ws(text, j + 1)
