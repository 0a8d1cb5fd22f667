"""Outbound OpenAI formatting (tokenizer manager chunks -> ``chat.completion`` / ``text_completion`` objects, events).

The tokenizer manager's chunks ``{"index", "text", "delta", "output_ids", "meta_info", "finished", "error"}``
become whole responses (the final chunk of every choice) or, through the stream formatters, zero or more SSE events
each. Choice ``index`` = position of the request in the expanded list (prompt i, sample j -> i * n + j); usage
counts each prompt once however many samples share it. Logprob fields come from ``openai_logprobs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sglkit.server.openai_chat_output import ChatOutputOptions, ChatOutputParser
from sglkit.server.openai_logprobs import (
    TokenDecoder,
    chat_logprobs,
    completion_logprobs,
    echo_logprobs,
    logprob_entries,
)
from sglkit.server.protocol import (
    ChatCompletionChoice,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionResponse,
    UsageInfo,
)

Chunk = dict[str, Any]
"""One output chunk of the tokenizer manager (see the module docstring for its keys)."""


def finish_fields(meta: Mapping[str, Any]) -> tuple[str | None, int | str | None]:
    """meta_info -> (finish_reason, matched_stop): "stop" | "length" | "abort", and the matched stop if any."""
    reason = meta.get("finish_reason")
    if not reason:
        return None, None
    kind = reason.get("type")
    return kind, reason.get("matched") if kind == "stop" else None


def usage_from(chunks: Mapping[int, Chunk], owners: list[int]) -> UsageInfo:
    """Usage over final chunks: each prompt counted once (n samples share it), every completion counted."""
    prompt_tokens = completion_tokens = 0
    seen: set[int] = set()
    for index, chunk in sorted(chunks.items()):
        meta = chunk["meta_info"]
        if owners[index] not in seen:
            seen.add(owners[index])
            prompt_tokens += meta.get("prompt_tokens", 0)
        completion_tokens += meta.get("completion_tokens", 0)
    return UsageInfo(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def build_chat_response(
    rid: str,
    created: int,
    model: str,
    finals: list[Chunk],
    owners: list[int],
    decode: TokenDecoder | None = None,
    logprobs: bool = False,
    output: ChatOutputOptions | None = None,
) -> dict[str, Any]:
    """Final chunks (one per choice) -> a ``chat.completion`` dict; ``output`` separates reasoning and reads
    tool calls (``finish_reason`` "tool_calls" when an answer that stopped made calls)."""
    choices = []
    for chunk in finals:
        finish, matched = finish_fields(chunk["meta_info"])
        fields: dict[str, Any] = {"content": chunk["text"]}
        if output is not None:
            parser = output.new_parser()
            fields = parser.parse_final(chunk["text"])
            finish = parser.finish_reason(finish)
        choices.append(
            ChatCompletionChoice(
                index=chunk["index"],
                message=ChatMessageOut(**fields),
                logprobs=chat_logprobs(chunk["meta_info"], decode) if logprobs else None,
                finish_reason=finish,
                matched_stop=matched,
            )
        )
    usage = usage_from({c["index"]: c for c in finals}, owners)
    return ChatCompletionResponse(
        id=rid, created=created, model=model, choices=choices, usage=usage
    ).model_dump()


def _completion_choice(chunk: Chunk, text: str, logprobs: dict | None) -> CompletionChoice:
    finish, matched = finish_fields(chunk["meta_info"]) if chunk["finished"] else (None, None)
    return CompletionChoice(
        index=chunk["index"], text=text, logprobs=logprobs, finish_reason=finish, matched_stop=matched
    )


def build_completion_response(
    rid: str,
    created: int,
    model: str,
    finals: list[Chunk],
    owners: list[int],
    echo_texts: list[str] | None = None,
    decode: TokenDecoder | None = None,
    logprobs: int | None = None,
) -> dict[str, Any]:
    """Final chunks -> a ``text_completion`` dict; ``echo_texts[owner]`` is prepended when echoing."""
    choices = []
    for chunk in finals:
        prefix = echo_texts[owners[chunk["index"]]] if echo_texts else ""
        lp = None
        if logprobs is not None:
            meta = chunk["meta_info"]
            lp = completion_logprobs(logprob_entries(meta, "output"), decode, len(prefix))
            if echo_texts:
                prompt_lp = echo_logprobs(meta, decode, len(prefix))
                lp = {key: prompt_lp[key] + lp[key] for key in lp}
        choices.append(_completion_choice(chunk, prefix + chunk["text"], lp))
    usage = usage_from({c["index"]: c for c in finals}, owners)
    return CompletionResponse(id=rid, created=created, model=model, choices=choices, usage=usage).model_dump()


class _StreamFormatter:
    """What both stream formatters share: the response id/model, the finished chunks, the usage chunk."""

    response_cls: type = ChatCompletionStreamResponse

    def __init__(self, rid: str, created: int, model: str, owners: list[int]) -> None:
        self.rid, self.created, self.model, self.owners = rid, created, model, owners
        self.num_logprobs_sent: dict[int, int] = {}
        self.finals: dict[int, Chunk] = {}

    def _response(self, choices: list, **extra: Any) -> dict[str, Any]:
        return self.response_cls(
            id=self.rid, created=self.created, model=self.model, choices=choices, **extra
        ).model_dump()

    def usage_event(self) -> dict[str, Any]:
        """The ``stream_options.include_usage`` chunk: no choices, the usage of every finished choice."""
        return self._response([], usage=usage_from(self.finals, self.owners))


class ChatStreamFormatter(_StreamFormatter):
    """Turns streamed chunks into ``chat.completion.chunk`` events: a role chunk first, then content deltas, the
    last one per choice with ``finish_reason``; ``usage_event`` gives the final choice-less usage chunk. With
    ``output``, the deltas are reasoning / content / tool-call deltas (see ``openai_chat_output``)."""

    def __init__(
        self,
        rid: str,
        created: int,
        model: str,
        owners: list[int],
        decode: TokenDecoder | None = None,
        logprobs: bool = False,
        output: ChatOutputOptions | None = None,
    ) -> None:
        super().__init__(rid, created, model, owners)
        self.decode, self.logprobs, self.output = decode, logprobs, output
        self.parsers: dict[int, ChatOutputParser] = {}

    def _deltas(self, index: int, chunk: Chunk) -> list[dict[str, Any]]:
        """The deltas of one chunk: its text as content, or parsed (and at the end, what the parser held)."""
        if self.output is None:
            return [{"content": chunk["delta"]}] if chunk["delta"] else []
        parser = self.parsers.setdefault(index, self.output.new_parser())
        deltas = parser.on_delta(chunk["delta"])
        return deltas + parser.finish() if chunk["finished"] else deltas

    def _event(
        self,
        index: int,
        delta: dict[str, Any],
        logprobs: dict | None = None,
        finish: str | None = None,
        matched: int | str | None = None,
    ) -> dict[str, Any]:
        choice = ChatCompletionStreamChoice(
            index=index, delta=delta, logprobs=logprobs, finish_reason=finish, matched_stop=matched
        )
        return self._response([choice])

    def on_chunk(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The events for one chunk (possibly none: a chunk with no new text, logprobs or finish)."""
        index, meta = chunk["index"], chunk["meta_info"]
        events = []
        if index not in self.num_logprobs_sent:
            self.num_logprobs_sent[index] = 0
            events.append(self._event(index, {"role": "assistant", "content": ""}))
        lp = None
        if self.logprobs:
            lp = chat_logprobs(meta, self.decode, self.num_logprobs_sent[index])
            self.num_logprobs_sent[index] += len(lp["content"])
            lp = lp if lp["content"] else None
        finish, matched = finish_fields(meta) if chunk["finished"] else (None, None)
        if chunk["finished"]:
            self.finals[index] = chunk
        deltas = self._deltas(index, chunk)
        if chunk["finished"] and index in self.parsers:
            finish = self.parsers[index].finish_reason(finish)
        for delta in deltas[:-1]:
            events.append(self._event(index, delta, lp))
            lp = None
        delta = deltas[-1] if deltas else {}
        if delta or lp or chunk["finished"]:
            events.append(self._event(index, delta, lp, finish, matched))
        return events


class CompletionStreamFormatter(_StreamFormatter):
    """Turns streamed chunks into ``text_completion`` events; the first event of a choice carries the echo."""

    response_cls = CompletionResponse

    def __init__(
        self,
        rid: str,
        created: int,
        model: str,
        owners: list[int],
        echo_texts: list[str] | None = None,
        decode: TokenDecoder | None = None,
        logprobs: int | None = None,
    ) -> None:
        super().__init__(rid, created, model, owners)
        self.echo_texts, self.decode, self.logprobs = echo_texts, decode, logprobs
        self.next_text_offset: dict[int, int] = {}  # as in the non-streamed answer: echo + token texts so far

    def on_chunk(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The events for one chunk (possibly none)."""
        index, meta = chunk["index"], chunk["meta_info"]
        first = index not in self.num_logprobs_sent
        text = chunk["delta"]
        lp = None
        if first:
            self.num_logprobs_sent[index] = 0
            if self.echo_texts:
                text = self.echo_texts[self.owners[index]] + text
            self.next_text_offset[index] = len(text) - len(chunk["delta"])
        if self.logprobs is not None:
            sent = self.num_logprobs_sent[index]
            lp = completion_logprobs(
                logprob_entries(meta, "output", sent), self.decode, self.next_text_offset[index]
            )
            self.num_logprobs_sent[index] = sent + len(lp["tokens"])
            if lp["tokens"]:
                self.next_text_offset[index] = lp["text_offset"][-1] + len(lp["tokens"][-1])
            if first and self.echo_texts:
                prompt_lp = echo_logprobs(meta, self.decode, len(text) - len(chunk["delta"]))
                lp = {key: prompt_lp[key] + lp[key] for key in lp}
            lp = lp if lp["tokens"] else None
        if chunk["finished"]:
            self.finals[index] = chunk
        if not (text or lp or chunk["finished"]):
            return []
        return [self._response([_completion_choice(chunk, text, lp)])]
