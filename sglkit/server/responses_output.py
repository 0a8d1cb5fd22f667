"""Responses API output (tokenizer manager chunks, read by ``openai_chat_output`` -> ``response`` objects, events).

A chat answer, split into reasoning / content / tool calls by the chat path's ``ChatOutputParser``, becomes the
``output`` items of a ``response``: a ``reasoning`` item (``reasoning_text`` content), a ``message`` item
(``output_text`` parts) and one ``function_call`` item per call (``call_id`` as the chat route's ``call_...``).
``finish_reason`` "length" makes the response ``incomplete`` (``incomplete_details.reason``
"max_output_tokens"). ``ResponseEvents`` turns a stream of those parser deltas into OpenAI's SSE events
(``event: <type>`` + ``data: {..., "sequence_number"}``): created, in_progress, then per item
``output_item.added`` (+ ``content_part.added``), its deltas, its ``.done`` events, and at the end
``response.completed`` / ``response.incomplete`` / ``response.failed`` with the whole response.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ResponseEvents", "ResponseHead", "new_id", "output_items", "usage_object"]


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style id: ``resp_...``, ``msg_...``, ``fc_...``, ``rs_...``."""
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_object(meta: Mapping[str, Any], reasoning_tokens: int = 0) -> dict[str, Any]:
    """meta_info -> Responses ``usage`` (``cached_tokens``: prompt tokens the radix cache reused)."""
    input_tokens, output_tokens = meta.get("prompt_tokens", 0), meta.get("completion_tokens", 0)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": meta.get("cached_tokens", 0)},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def status_of(meta: Mapping[str, Any]) -> tuple[str, dict[str, str] | None]:
    """(status, incomplete_details) of a finished answer: "length" is incomplete (max_output_tokens)."""
    reason = (meta.get("finish_reason") or {}).get("type")
    if reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


@dataclass
class ResponseHead:
    """What every ``response`` object of one request repeats: its id, time, model and the echoed settings."""

    id: str
    model: str
    echo: dict[str, Any]
    created_at: int = field(default_factory=lambda: int(time.time()))

    def object(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        incomplete_details: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The ``response`` object in OpenAI's shape (``output_text`` is left to clients: the SDK computes it)."""
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": incomplete_details,
            "model": self.model,
            "output": output,
            "usage": usage,
            **self.echo,
        }


def _message(text: str, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": []}
    return {
        "type": "message",
        "id": item_id or new_id("msg"),
        "role": "assistant",
        "status": status,
        "content": [part],
    }


def _reasoning(text: str, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": item_id or new_id("rs"),
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }


def _function_call(call_id: str, name: str, arguments: str, item_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id or new_id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def output_items(fields: Mapping[str, Any], status: str = "completed") -> list[dict[str, Any]]:
    """A parsed answer ``{"content", "reasoning_content", "tool_calls"}`` -> ``output`` items; the message is
    left out when the answer is only calls (whitespace around them is not a message)."""
    items = []
    if fields.get("reasoning_content"):
        items.append(_reasoning(fields["reasoning_content"]))
    calls = fields.get("tool_calls") or []
    content = fields.get("content") or ""
    if content.strip() or not calls:
        items.append(_message(content, "incomplete" if status == "incomplete" else "completed"))
    for call in calls:
        fn = call["function"]
        items.append(_function_call(call["id"], fn["name"], fn["arguments"]))
    return items


def conversation_turn(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Output items -> the assistant chat message a later ``previous_response_id`` continues from."""
    msg: dict[str, Any] = {"role": "assistant", "content": ""}
    for item in items:
        if item["type"] == "message":
            msg["content"] += item["content"][0]["text"]
        elif item["type"] == "reasoning":
            msg["reasoning_content"] = item["content"][0]["text"]
        else:
            call = {"name": item["name"], "arguments": item["arguments"]}
            msg.setdefault("tool_calls", []).append(
                {"id": item["call_id"], "type": "function", "function": call}
            )
    return msg


class ResponseEvents:
    """Chat-parser deltas -> Responses SSE events. One item is open at a time; a new kind of delta (or a new
    call) closes it. Whitespace-only content waits until real text follows (calls are not messages)."""

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.sequence_number = 0
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None
        self.calls: dict[int, dict[str, Any]] = {}  # tool index -> its function_call item
        self.pending_space = ""

    def _event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def _where(self, item: dict[str, Any]) -> dict[str, Any]:
        return {"item_id": item["id"], "output_index": self.items.index(item)}

    def start(self) -> list[str]:
        """``response.created`` and ``response.in_progress``."""
        response = self.head.object("in_progress", [])
        return [self._event(k, response=response) for k in ("response.created", "response.in_progress")]

    # ------------------------------------------------------------------ items
    def _open(self, item: dict[str, Any]) -> list[str]:
        events = self._close()
        self.items.append(item)
        self.open = item
        events.append(self._event("response.output_item.added", output_index=len(self.items) - 1, item=item))
        if item["type"] != "function_call":
            part = {"type": "output_text", "text": "", "annotations": []}
            if item["type"] == "reasoning":
                part = {"type": "reasoning_text", "text": ""}
            events.append(
                self._event("response.content_part.added", **self._where(item), content_index=0, part=part)
            )
        return events

    def _close(self, status: str = "completed") -> list[str]:
        item, self.open = self.open, None
        if item is None:
            return []
        where = self._where(item)
        events = []
        if item["type"] == "function_call":
            item["status"] = "completed"
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    **where,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        else:
            text = "".join(item.pop("pieces"))
            if item["type"] == "message":
                done = _message(text, status, item["id"])
            else:
                done = _reasoning(text, "completed", item["id"])
            item.clear()
            item.update(done)
            part = item["content"][0]
            kind = (
                "response.output_text.done" if item["type"] == "message" else "response.reasoning_text.done"
            )
            extra = {"logprobs": []} if item["type"] == "message" else {}
            events.append(self._event(kind, **where, content_index=0, text=text, **extra))
            events.append(self._event("response.content_part.done", **where, content_index=0, part=part))
        events.append(self._event("response.output_item.done", output_index=where["output_index"], item=item))
        return events

    def _text(self, kind: str, text: str, force: bool = False) -> list[str]:
        """Reasoning or message text: into the open item of that kind, else into a new one (``force``: open a
        message even for whitespace)."""
        events: list[str] = []
        if self.open is None or self.open["type"] != kind:
            if kind == "message" and not text.strip() and not force:
                self.pending_space += text
                return []
            item_id = new_id("msg" if kind == "message" else "rs")
            make = _message if kind == "message" else _reasoning
            events = self._open({**make("", "in_progress", item_id), "content": [], "pieces": []})
            if kind == "message":
                text, self.pending_space = self.pending_space + text, ""
        self.open["pieces"].append(text)
        delta_kind = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        events.append(self._event(delta_kind, **self._where(self.open), content_index=0, delta=text, **extra))
        return events

    def _call(self, delta: dict[str, Any]) -> list[str]:
        index, fn = delta["index"], delta["function"]
        if "id" in delta:
            item = _function_call(delta["id"], fn["name"], "")
            item["status"] = "in_progress"
            self.calls[index] = item
            self.pending_space = ""
            return self._open(item)
        item = self.calls[index]
        item["arguments"] += fn.get("arguments", "")
        if item is not self.open:  # arguments of a call already closed: kept for the final response only
            return []
        return [
            self._event("response.function_call_arguments.delta", **self._where(item), delta=fn["arguments"])
        ]

    def on_deltas(self, deltas: list[dict[str, Any]]) -> list[str]:
        """Chat deltas (``reasoning_content`` / ``content`` / ``tool_calls``) -> events."""
        events: list[str] = []
        for delta in deltas:
            if delta.get("reasoning_content"):
                events += self._text("reasoning", delta["reasoning_content"])
            if delta.get("content"):
                events += self._text("message", delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
        return events

    # ------------------------------------------------------------------ the end
    def finish(self, meta: Mapping[str, Any], count_tokens: Callable[[str], int]) -> tuple[list[str], dict]:
        """Close the open item; the final event and the final ``response`` object."""
        status, details = status_of(meta)
        events = []
        if not self.calls and not any(i["type"] == "message" for i in self.items):  # no calls: one message
            events = self._text("message", "", force=True)
        events += self._close("incomplete" if status == "incomplete" else "completed")
        reasoning = "".join(i["content"][0]["text"] for i in self.items if i["type"] == "reasoning")
        usage = usage_object(meta, count_tokens(reasoning) if reasoning else 0)
        response = self.head.object(status, self.items, usage, incomplete_details=details)
        events.append(self._event(f"response.{status}", response=response))
        return events, response

    def fail(self, message: str, code: str) -> tuple[list[str], dict]:
        """The request failed after the stream started: close the open item, then ``response.failed``."""
        events = self._close("incomplete")
        response = self.head.object("failed", self.items, error={"code": code, "message": message})
        events.append(self._event("response.failed", response=response))
        return events, response
