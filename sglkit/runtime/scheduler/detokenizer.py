"""Output token ids -> text deltas: incremental detokenization and stop-string search for streaming.

Each request owns one ``IncrementalDetokenizer``. ``append(new_ids)`` returns only text that is final; text
whose bytes are still incomplete (the decoded tail ends in U+FFFD) is held back until more tokens arrive or
``flush()`` is called at the end of the stream. The prefix/read-offset technique decodes a short window of
recent tokens, never the whole sequence: ``ids[prefix:read]`` was already emitted and is decoded again only as
context, so tokenizers that decode a token differently at the start of a sequence (SentencePiece's leading
"▁") still get the right spacing.

``spaces_between_special_tokens``: transformers 5's fast tokenizers accept the flag and ignore it (only the
removed slow tokenizers honoured it). Here it keeps the slow tokenizers' meaning when special tokens are kept
(``skip_special_tokens=False``): the output is split at special tokens, each text run is decoded on its own,
and the non-empty pieces are joined with single spaces, e.g. ``"<s> Hello <|im_end|>"``. With the flag off,
or with special tokens skipped, the text equals ``tokenizer.decode(ids, skip_special_tokens=...)``.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded as context before the first output token (same window as vLLM / SGLang).
INITIAL_CONTEXT_TOKENS = 5
# Drop consumed ids from the window buffer once this many have piled up.
_TRIM_AT = 64


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (HF tokenizers and raw ``tokenizers.Tokenizer`` both work)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None)
    if added is None and hasattr(tokenizer, "get_added_tokens_decoder"):
        added = tokenizer.get_added_tokens_decoder()
    for token_id, token in (added or {}).items():
        if getattr(token, "special", False):
            ids.add(int(token_id))
    return ids


class IncrementalDetokenizer:
    """Turns a stream of output token ids into text deltas that never split a character."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: list[int] | None = None,
        skip_special_tokens: bool = True,
        spaces_between_special_tokens: bool = True,
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self._special_ids = special_token_ids(tokenizer) if not skip_special_tokens else set()
        # Split at special tokens only when they are kept and must be separated by spaces.
        self._segmented = bool(self._special_ids) and spaces_between_special_tokens
        self._ids: list[int] = list(prompt_ids[-INITIAL_CONTEXT_TOKENS:]) if prompt_ids else []
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._pieces: list[str] = []
        self._text_cache: str | None = ""
        self._num_sub_texts = 0  # non-empty pieces emitted so far (segmented mode)
        self._segment_started = False  # the current text run has emitted something (segmented mode)
        self.num_tokens = 0

    @property
    def text(self) -> str:
        """All text emitted so far (the concatenation of every returned delta)."""
        if self._text_cache is None:
            self._text_cache = "".join(self._pieces)
        return self._text_cache

    def append(self, token_ids: list[int]) -> str:
        """Feed newly generated ids; return the text that became final (possibly "")."""
        self.num_tokens += len(token_ids)
        out: list[str] = []
        if not self._segmented:
            self._ids.extend(token_ids)
            out.append(self._step(final=False))
        else:
            run: list[int] = []
            for token_id in token_ids:
                if token_id in self._special_ids:
                    self._ids.extend(run)
                    run = []
                    out.append(self._step(final=True))
                    out.append(self._emit_special(token_id))
                else:
                    run.append(token_id)
            self._ids.extend(run)
            out.append(self._step(final=False))
        return self._record("".join(out))

    def flush(self) -> str:
        """End of stream: return any held-back text (incomplete bytes decode to U+FFFD, like ``decode``)."""
        return self._record(self._step(final=True))

    def _record(self, delta: str) -> str:
        if delta:
            self._pieces.append(delta)
            self._text_cache = None
        return delta

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _step(self, final: bool) -> str:
        """Decode the window; emit new text unless it ends in an incomplete character (and not ``final``)."""
        if self._read_offset >= len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) and not final:
            return ""
        if new_text.endswith(REPLACEMENT_CHAR) and not final:
            return ""
        delta = new_text[len(prefix_text) :]
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        if self._prefix_offset >= _TRIM_AT:
            del self._ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        if self._segmented and delta and not self._segment_started:
            self._segment_started = True
            delta = self._separator() + delta
        return delta

    def _separator(self) -> str:
        sep = " " if self._num_sub_texts > 0 else ""
        self._num_sub_texts += 1
        return sep

    def _emit_special(self, token_id: int) -> str:
        """A kept special token in segmented mode: its own piece, and the next text run starts fresh."""
        self._ids = []
        self._prefix_offset = self._read_offset = 0
        self._segment_started = False
        text = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return self._separator() + text if text else ""


def find_stop_str(text: str, stop_strs: list[str], search_from: int = 0) -> tuple[int, str] | None:
    """Earliest occurrence at/after ``search_from`` of any stop string -> (index, stop string), else None.

    Ties at the same index go to the string listed first. To scan only new text, pass
    ``search_from = max(0, len(old_text) - max_stop_len + 1)`` so a stop string straddling the boundary is found.
    """
    start = max(0, search_from)
    best: tuple[int, str] | None = None
    for stop in stop_strs:
        if not stop:
            continue
        index = text.find(stop, start)
        if index != -1 and (best is None or index < best[0]):
            best = (index, stop)
    return best


def partial_stop_len(text: str, stop_strs: list[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string.

    A streaming caller can hold back that many characters, since they may turn out to be the start of a stop
    string that gets trimmed.
    """
    longest = 0
    for stop in stop_strs:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
