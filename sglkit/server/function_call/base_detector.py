"""The engine every tool-call detector shares (model text -> normal text + tool calls, streamed or whole).

A model's output is normal text with tool-call *regions* in it. A detector says where a region starts
(``find_start``: a start token such as ``<tool_call>``, or ``{`` / ``[`` at the start of the output) and how one
call inside it reads (``parse_item``); the region's body is ``open_token``, then calls separated by ``separator``,
then ``close_token`` (each optional). The engine runs one state machine over the text as it grows:

* normal text is sent as it comes, except a tail that could still be the start of a region (a partial start
  token), and whitespace next to a region (dropped, as SGLang strips the normal text around calls);
* inside a region, a call's first piece (its name) is sent once the name is complete and names a tool of the
  request, then argument fragments: the stable canonical prefix of the arguments (see ``partial_json``);
* a call to a tool the request does not have is kept as text (the raw region), and so is a region that turns out
  not to be tool calls (invalid syntax), from the point where it failed.

The non-streamed parse (``detect_and_parse``) is the same machine fed the whole text at once, so streamed pieces
always add up to the non-streamed calls. The one difference is at the end: a call cut off before it completes
(``max_tokens``) stays a partial call in a stream (its pieces were sent) but goes back to text when parsed whole.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from sglkit.server.function_call.core_types import StreamingParseResult, ToolCallItem, tool_names
from sglkit.server.function_call.partial_json import canonical_prefix, decode_string, skip_ws

__all__ = ["BaseFormatDetector", "ItemProgress", "find_token", "parse_json_call"]

_WS = " \t\n\r"
ARGUMENT_KEYS = ("arguments", "parameters")


@dataclass
class ItemProgress:
    """How far one call of a region has been read: its name once complete, the stable canonical prefix of its
    arguments (a JSON object), whether the arguments are complete, and the index after the call once it is."""

    name: str | None
    args: str
    args_complete: bool
    end: int | None


@dataclass
class _Call:
    index: int
    name: str
    sent: str = ""  # the argument text sent so far
    complete: bool = False


@dataclass
class _Region:
    start: int  # index of the region's first character (its start token)
    body: int  # index after the start token
    pos: int  # parse position
    phase: str  # "open" | "item" | "after"
    emitted: bool = False  # a call of this region was sent
    completed: int = 0  # calls of this region read to their end
    as_text: bool = False  # its first call names an unknown tool: the whole region is text
    item_start: int = 0
    call: _Call | None = None
    item_as_text: bool = False


def find_token(text: str, pos: int, token: str) -> tuple[int, int | None] | None:
    """Where ``token`` starts in ``text[pos:]`` and where it ends; ``(i, None)`` when only a prefix of it ends the
    text (wait for more); None when it is not there."""
    idx = text.find(token, pos)
    if idx >= 0:
        return idx, idx + len(token)
    for k in range(min(len(token) - 1, len(text) - pos), 0, -1):
        if token.startswith(text[len(text) - k :]):
            return len(text) - k, None
    return None


def _arguments(text: str, i: int) -> tuple[str, int | None]:
    """The canonical prefix of a call's arguments: a JSON object, or a JSON string holding one."""
    j = skip_ws(text, i)
    if j >= len(text):
        return "", None
    if text[j] == '"':
        value, end = decode_string(text, j)
        if value is None:
            return "", None
        out, inner_end = canonical_prefix(value, 0)
        if (
            not value.lstrip(_WS).startswith("{")
            or inner_end is None
            or skip_ws(value, inner_end) != len(value)
        ):
            raise ValueError("arguments must be a JSON object")
        return out, end
    if text[j] != "{":
        raise ValueError("arguments must be a JSON object")
    return canonical_prefix(text, j)


def parse_json_call(text: str, i: int) -> ItemProgress:
    """Read a call written as a JSON object ``{"name": ..., "arguments" | "parameters": {...}}`` at ``text[i:]``
    (other keys ignored; no arguments means ``{}``). Raises ValueError when it cannot be such an object."""
    j = skip_ws(text, i)
    name: str | None = None
    args: str | None = None
    if j >= len(text):
        return ItemProgress(None, "", False, None)
    if text[j] != "{":
        raise ValueError("a call must be a JSON object")
    j = skip_ws(text, j + 1)
    while j < len(text):
        key, end = decode_string(text, j)
        if end is None:
            break
        j = skip_ws(text, end)
        if j >= len(text):
            break
        if text[j] != ":":
            raise ValueError("expected ':'")
        if key == "name":
            vs = skip_ws(text, j + 1)
            if vs >= len(text):
                break
            value, end = decode_string(text, vs)
            if end is None:
                break
            name = value if name is None else name
        elif key in ARGUMENT_KEYS and args is None:
            args, end = _arguments(text, j + 1)
            if end is None:
                break
        else:
            _, end = canonical_prefix(text, j + 1)
            if end is None:
                break
        j = skip_ws(text, end)
        if j >= len(text):
            break
        if text[j] == "}":
            if name is None:
                raise ValueError("a call needs a name")
            return ItemProgress(name, "{}" if args is None else args, True, j + 1)
        if text[j] != ",":
            raise ValueError("expected ',' or '}'")
        j = skip_ws(text, j + 1)
    return ItemProgress(name, args or "", False, None)


class BaseFormatDetector(ABC):
    """One model family's tool-call format, as a streaming state machine (see the module docstring).

    Subclasses set ``name`` and the region body tokens and implement ``find_start`` and ``parse_item``. One
    instance parses one output: feed it with ``parse_streaming_increment`` and end with ``finish``.
    """

    name: ClassVar[str]
    open_token: ClassVar[str] = ""
    separator: ClassVar[str | None] = None
    close_token: ClassVar[str | None] = None

    def __init__(self) -> None:
        self._text = ""
        self._pos = 0  # text before it is handled
        self._region: _Region | None = None
        self._calls: list[_Call] = []
        self._pending_ws = ""  # trailing whitespace of the normal text sent so far, sent if more text follows
        self._ws_before_region = False  # the pending whitespace came before a region: dropped at the end
        self._skip_ws = False  # right after a region: drop leading whitespace
        self._seen_output = False  # non-whitespace normal text was sent or a region started
        self._names: set[str] = set()

    # -------------------------------------------------------------------- format hooks
    @abstractmethod
    def find_start(self, text: str, pos: int, at_output_start: bool) -> tuple[int, int | None] | None:
        """The first region start in ``text[pos:]``: ``(start, body)``; ``(start, None)`` when ``text[start:]``
        may still become one (hold it back); None when there is none. ``at_output_start``: nothing but
        whitespace came before ``pos``."""

    @abstractmethod
    def parse_item(self, text: str, pos: int) -> ItemProgress:
        """Read one call at ``text[pos:]`` (leading whitespace allowed); ValueError when it cannot be one."""

    # -------------------------------------------------------------------- public API
    def has_tool_call(self, text: str) -> bool:
        """True when ``text`` contains the start of a tool-call region of this format."""
        m = self.find_start(text, 0, True)
        return m is not None and m[1] is not None

    def parse_streaming_increment(self, new_text: str, tools: Iterable[Any] | None) -> StreamingParseResult:
        """Feed the next piece of output; the normal text and call pieces it completes (see ToolCallItem)."""
        self._names = tool_names(tools)
        self._text += new_text
        out = StreamingParseResult()
        while self._step(out):
            pass
        return out

    def finish(
        self, tools: Iterable[Any] | None = None, keep_partial_calls: bool = True
    ) -> StreamingParseResult:
        """End of output: what was held back. A call cut off mid-way stays as sent, or with
        ``keep_partial_calls=False`` its raw text becomes normal text (and it is left out of ``calls``)."""
        if tools is not None:
            self._names = tool_names(tools)
        out = StreamingParseResult()
        r, text = self._region, self._text
        if r is None:
            self._emit(out, text[self._pos :])
        elif r.phase == "after":
            self._end_region(out, len(text))
        elif not r.completed and (not keep_partial_calls or not r.emitted or r.as_text):
            if r.call is not None:
                r.call.complete = False
            self._emit(out, text[r.start :])
        elif r.call is None or r.item_as_text or not keep_partial_calls:
            if r.call is not None:
                r.call.complete = False
            self._emit(out, text[skip_ws(text, r.item_start) :])
        self._region, self._pos = None, len(text)
        if not self._ws_before_region:
            out.normal_text += self._pending_ws
        self._pending_ws = ""
        return out

    def detect_and_parse(self, text: str, tools: Iterable[Any] | None) -> StreamingParseResult:
        """Parse a whole output: its normal text and complete calls (``parameters`` a JSON object string)."""
        parser = type(self)()
        first = parser.parse_streaming_increment(text, tools)
        last = parser.finish(tools, keep_partial_calls=False)
        calls = [c for c in parser._calls if c.complete]
        return StreamingParseResult(
            first.normal_text + last.normal_text,
            [ToolCallItem(i, c.name, c.sent) for i, c in enumerate(calls)],
        )

    # -------------------------------------------------------------------- the machine
    def _emit(self, out: StreamingParseResult, s: str) -> None:
        """Send normal text, holding trailing whitespace until more text follows.

        Whitespace around a region collapses: the whitespace before it is sent only if normal text follows the
        region (in place of the whitespace after it), so ``"a [f()] b"`` leaves ``"a b"``."""
        if not s:
            return
        stripped = s.rstrip(_WS)
        if not stripped:
            if not self._ws_before_region:
                self._pending_ws += s
            return
        out.normal_text += self._pending_ws + stripped
        self._pending_ws = s[len(stripped) :]
        self._ws_before_region = False
        self._seen_output = True

    def _step(self, out: StreamingParseResult) -> bool:
        if self._region is None:
            return self._step_normal(out)
        return self._step_region(out)

    def _step_normal(self, out: StreamingParseResult) -> bool:
        text, pos = self._text, self._pos
        if self._skip_ws:
            pos = self._pos = skip_ws(text, pos)
            if pos == len(text):
                return False
            self._skip_ws = False
        m = self.find_start(text, pos, not self._seen_output)
        if m is None:
            self._emit(out, text[pos:])
            self._pos = len(text)
            return False
        start, body = m
        self._emit(out, text[pos:start])
        self._pos = start
        if body is None:
            return False
        if not self._seen_output:
            self._pending_ws = ""
        self._ws_before_region = True
        self._seen_output = True
        phase = "open" if self.open_token else "item"
        self._region = _Region(start=start, body=body, pos=body, phase=phase, item_start=body)
        return True

    def _step_region(self, out: StreamingParseResult) -> bool:
        r, text = self._region, self._text
        assert r is not None
        if r.phase == "open":
            p = skip_ws(text, r.pos)
            rest = text[p:]
            if rest.startswith(self.open_token):
                r.pos = r.item_start = p + len(self.open_token)
                r.phase = "item"
                return True
            if self.open_token.startswith(rest):
                return False
            return self._abandon(out, p)
        if r.phase == "item":
            try:
                progress = self.parse_item(text, r.item_start)
            except ValueError:
                return self._abandon(out, r.item_start)
            self._apply(out, r, progress)
            if progress.end is None:
                return False
            if r.item_as_text and not r.as_text:
                self._emit(out, text[r.item_start : progress.end])
            r.completed += r.call is not None
            r.pos, r.phase, r.call, r.item_as_text = progress.end, "after", None, False
            return True
        p = skip_ws(text, r.pos)
        rest = text[p:]
        for token, phase in ((self.separator, "item"), (self.close_token, None)):
            if token and rest.startswith(token):
                if phase is None:
                    self._end_region(out, p + len(token))
                else:
                    r.pos = r.item_start = p + len(token)
                    r.phase = phase
                return True
        if any(token and token.startswith(rest) for token in (self.separator, self.close_token)) or not rest:
            return False
        self._end_region(out, p)  # no close token (or a missing one): the rest is normal text
        return True

    def _apply(self, out: StreamingParseResult, r: _Region, progress: ItemProgress) -> None:
        """Send what a call's progress adds: its first piece once the name is known, then argument fragments."""
        if r.as_text:
            return
        if r.call is None and not r.item_as_text and progress.name is not None:
            if progress.name in self._names:
                r.call = _Call(len(self._calls), progress.name)
                self._calls.append(r.call)
                r.emitted = True
                out.calls.append(ToolCallItem(r.call.index, r.call.name, ""))
            else:
                r.item_as_text = True
                r.as_text = not r.emitted
        call = r.call
        if call is None:
            return
        if not progress.args.startswith(call.sent):
            raise AssertionError("canonical argument prefixes must only grow")
        fragment = progress.args[len(call.sent) :]
        if fragment:
            out.calls.append(ToolCallItem(call.index, None, fragment))
            call.sent = progress.args
        if progress.end is not None:
            call.complete = progress.args_complete

    def _end_region(self, out: StreamingParseResult, end: int) -> None:
        r = self._region
        assert r is not None
        self._region, self._pos = None, end
        if r.as_text:
            self._emit(out, self._text[r.start : end])
        else:
            self._skip_ws = True

    def _abandon(self, out: StreamingParseResult, at: int) -> bool:
        """The region is not (or no longer) tool calls: its text from ``at`` is normal text, scanned again."""
        r = self._region
        assert r is not None
        self._region = None
        if r.call is not None:
            r.call.complete = False
        if r.completed:
            self._pos = at
            return True
        resume = max(r.body, r.start + 1)  # the start token is text; look for regions after it
        self._emit(out, self._text[r.start : resume])
        self._pos = resume
        return True
