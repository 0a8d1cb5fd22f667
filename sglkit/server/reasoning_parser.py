"""Reasoning separation (chat route, after generation): ``<think>...</think>`` -> ``reasoning_content`` + content.

``--reasoning-parser`` names the model family (SGLang's names and behaviour):

* ``deepseek-r1``: the output *is* reasoning until ``</think>`` (DeepSeek-R1 starts thinking without a
  ``<think>`` tag; R1-0528 writes one: both are handled); no ``</think>`` means it was all reasoning.
* ``qwen3``: reasoning only inside ``<think>...</think>`` at the start of the output, unless the chat template
  already opened ``<think>`` in the prompt (Qwen3 thinking templates): then, as for deepseek-r1, everything up to
  ``</think>`` is reasoning. The chat route tells the parser which (``force_reasoning``) from the prompt's tail;
  when nobody says (``force_reasoning=None``, e.g. ``/separate_reasoning``), a whole text that has ``</think>``
  but no ``<think>`` is split at ``</think>`` too.

Whitespace right after ``<think>`` and right after ``</think>`` is dropped. Streaming never shows a partial tag:
a tail that could be the start of a tag is held back until the next piece (or ``finish``) decides. With
``stream_reasoning=False`` the reasoning is sent as one piece when it ends. Streamed pieces add up to the
non-streamed result.
"""

from __future__ import annotations

__all__ = ["REASONING_PARSERS", "ReasoningParser"]

REASONING_PARSERS = ("qwen3", "deepseek-r1")
"""The names ``--reasoning-parser`` accepts."""

THINK_START, THINK_END = "<think>", "</think>"
_ALWAYS_REASONING = {"qwen3": False, "deepseek-r1": True}


def _held_prefix(text: str, tag: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-k:]):
            return k
    return 0


class ReasoningParser:
    """Splits one output into reasoning and content, whole (``parse_non_stream``) or streamed
    (``parse_stream_chunk`` per piece, then ``finish``)."""

    def __init__(
        self, model_type: str, stream_reasoning: bool = True, force_reasoning: bool | None = None
    ) -> None:
        if model_type not in _ALWAYS_REASONING:
            raise ValueError(
                f"Unknown reasoning parser {model_type!r}; choose one of {', '.join(REASONING_PARSERS)}."
            )
        self.model_type = model_type
        self.stream_reasoning = stream_reasoning
        self.lenient = force_reasoning is None and not _ALWAYS_REASONING[model_type]
        self.force_reasoning = _ALWAYS_REASONING[model_type] or bool(force_reasoning)
        self._mode = "reasoning" if self.force_reasoning else "start"
        self._buf = ""
        self._strip = True  # drop whitespace at the start of the current section
        self._open_tag_possible = self.force_reasoning  # a forced section may still begin with <think>
        self._held_reasoning = ""

    def parse_non_stream(self, text: str) -> tuple[str | None, str]:
        """A whole output -> (reasoning or None, content)."""
        s = text.lstrip()
        if self.force_reasoning or s.startswith(THINK_START):
            if s.startswith(THINK_START):
                s = s[len(THINK_START) :].lstrip()
            idx = s.find(THINK_END)
            if idx < 0:
                return s or None, ""
            return s[:idx] or None, s[idx + len(THINK_END) :].lstrip()
        if self.lenient and THINK_END in text:
            idx = text.find(THINK_END)
            return text[:idx].lstrip() or None, text[idx + len(THINK_END) :].lstrip()
        return None, text

    def parse_stream_chunk(self, delta: str) -> tuple[str, str]:
        """The next piece of output -> (reasoning delta, content delta); either may be empty."""
        self._buf += delta
        reasoning, content = self._advance()
        return self._route_reasoning(reasoning), content

    def finish(self) -> tuple[str, str]:
        """End of output -> (reasoning, content) held back so far."""
        reasoning, content = self._advance()
        buf, self._buf = self._buf, ""
        if self._mode == "start":
            content += buf
        elif self._mode == "reasoning":
            reasoning += buf.lstrip() if self._strip else buf
        else:
            content += buf.lstrip() if self._strip else buf
        reasoning = self._held_reasoning + reasoning
        self._held_reasoning = ""
        return reasoning, content

    @property
    def in_reasoning(self) -> bool:
        """True while the output is (or may still be) reasoning."""
        return self._mode != "content"

    def _route_reasoning(self, reasoning: str) -> str:
        """With stream_reasoning off, reasoning waits until it ends."""
        if self.stream_reasoning:
            return reasoning
        self._held_reasoning += reasoning
        if self._mode != "content":
            return ""
        out, self._held_reasoning = self._held_reasoning, ""
        return out

    def _advance(self) -> tuple[str, str]:
        reasoning = content = ""
        while True:
            if self._mode == "start":
                s = self._buf.lstrip()
                if not s or (len(s) < len(THINK_START) and THINK_START.startswith(s)):
                    break
                if s.startswith(THINK_START):
                    self._mode, self._buf, self._strip = "reasoning", s[len(THINK_START) :], True
                else:
                    self._mode, self._strip = "content", False
                continue
            if self._strip:
                self._buf = self._buf.lstrip()
                if not self._buf:
                    break
                if self._mode == "reasoning" and self._open_tag_possible:
                    if self._buf.startswith(THINK_START):
                        self._buf, self._open_tag_possible = self._buf[len(THINK_START) :], False
                        continue
                    if THINK_START.startswith(self._buf):
                        break
                    self._open_tag_possible = False
                self._strip = False
            if self._mode == "content":
                content += self._buf
                self._buf = ""
                break
            idx = self._buf.find(THINK_END)
            if idx >= 0:
                reasoning += self._buf[:idx]
                self._buf = self._buf[idx + len(THINK_END) :]
                self._mode, self._strip = "content", True
                continue
            keep = _held_prefix(self._buf, THINK_END)
            reasoning += self._buf[: len(self._buf) - keep]
            self._buf = self._buf[len(self._buf) - keep :]
            break
        return reasoning, content
