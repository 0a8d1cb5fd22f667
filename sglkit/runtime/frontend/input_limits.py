"""Input limits (front end, before tokenizing): how much work one request may cause before it is refused.

Tokenizing costs time and memory in proportion to the text (about 0.7 s and 100 MB per million characters for a
byte-level BPE), so the length check cannot wait for the full token ids: a 50 MB prompt would be tokenized for a
minute before the context-length 400. Three bounds keep every refusal fast and every accepted input cheap:

- **inputs per request** (``check_num_inputs``): prompts x ``n`` over ``--max-inputs-per-request`` is refused
  before anything is tokenized;
- **characters** (``check_text_chars``): a text over ``MAX_CHARS_PER_TOKEN`` characters per token of context (and
  over ``MIN_INPUT_CHARS``) is refused unread. No real text comes near it (prose and code average 3-5 characters per
  token); it is the hard bound on what one text may cost, even for a tokenizer that folds any number of characters
  into one token (WordPiece's ``[UNK]`` for a long word, normalizers that drop characters);
- **windows** (``encode_bounded``): a text up to ``EXACT_COUNT_CHARS`` characters (or ``WINDOW_CHARS_PER_TOKEN``
  per token of context) is tokenized whole, so its refusal carries the exact count in SGLang's words. A longer
  one is first tokenized in windows cut at whitespace; once the windows hold more tokens than the context, the text
  is refused with that count as a lower bound ("at least N tokens"). Cutting at whitespace keeps each window's
  tokens those of the whole text (every pre-tokenizer splits there), so the refusal is right for every tokenizer;
  only a text that passes is tokenized whole.

Every refusal is an ``InvalidRequestError`` naming the parameter, in SGLang's wording where SGLang has one.
"""

from __future__ import annotations

from typing import Any

from sglkit.runtime.frontend.errors import InvalidRequestError

MAX_CHARS_PER_TOKEN = 64
"""Hard bound: a text longer than ``context_len * MAX_CHARS_PER_TOKEN`` characters is refused without tokenizing."""
MIN_INPUT_CHARS = 1 << 20
"""The hard bound is never below this many characters (a model with a tiny context still counts long texts)."""
WINDOW_CHARS_PER_TOKEN = 8
"""Windows of ``context_len * WINDOW_CHARS_PER_TOKEN`` characters: the work before a long text is refused."""
EXACT_COUNT_CHARS = 1 << 18
"""A text up to this many characters is tokenized whole (about 0.2 s), so its refusal gives its exact length."""
_CUT_LOOKBACK = 256  # how far back from a window's end a whitespace cut is looked for


def max_input_chars(context_len: int) -> int:
    """The most characters one text may have for a model with ``context_len`` tokens of context."""
    return max(context_len * MAX_CHARS_PER_TOKEN, MIN_INPUT_CHARS)


def check_text_chars(num_chars: int, context_len: int, param: str, where: str = "") -> None:
    """Refuse a text of ``num_chars`` characters over the hard bound (``where``: a batch entry, e.g. ``text[2]``)."""
    limit = max_input_chars(context_len)
    if num_chars > limit:
        where = f" {where}" if where else ""
        raise InvalidRequestError(
            f"The input{where} ({num_chars} characters) is longer than the model's context length "
            f"({context_len} tokens) allows: inputs over {limit} characters are refused before tokenizing.",
            param,
        )


def check_num_inputs(num_inputs: int, num_samples: int, limit: int | None, param: str) -> None:
    """Refuse a request whose prompts (``num_inputs``, from ``param``) times samples exceed ``limit``.

    ``num_samples`` is the total over the prompts (each prompt's ``n``); too many prompts alone names ``param``,
    otherwise the ``n`` expansion is to blame.
    """
    if limit is None:
        return
    if num_inputs > limit:
        raise InvalidRequestError(
            f"The batch has {num_inputs} inputs; at most {limit} are allowed per request "
            "(--max-inputs-per-request).",
            param,
        )
    if num_samples > limit:
        raise InvalidRequestError(
            f"The request asks for {num_samples} samples ({num_inputs} inputs x n); at most {limit} are allowed "
            "per request (--max-inputs-per-request).",
            "n",
        )


def _cut(text: str, start: int, end: int) -> int:
    """A window end in ``(start, end]``: just before the last whitespace near ``end`` (``end`` when none)."""
    if end >= len(text):
        return len(text)
    floor = max(start + 1, end - _CUT_LOOKBACK)
    for i in range(end, floor - 1, -1):
        if text[i].isspace():
            return i
    return end


def encode_bounded(
    tokenizer: Any,
    text: str,
    max_tokens: int,
    context_len: int,
    param: str,
    add_special_tokens: bool = True,
    where: str = "",
    exact_chars: int = EXACT_COUNT_CHARS,
) -> list[int]:
    """``text`` -> token ids, refusing (400 on ``param``) a text with surely more than ``max_tokens`` tokens.

    The work is bounded by the context, not by the text: the character bound first, then (past ``exact_chars``)
    windows of ``context_len * WINDOW_CHARS_PER_TOKEN`` characters until their tokens exceed ``max_tokens``. A text
    that may fit is tokenized whole and returned; the caller checks its exact length (SGLang's messages).
    """
    check_text_chars(len(text), context_len, param, where)
    window = max(context_len, 1) * WINDOW_CHARS_PER_TOKEN
    if len(text) <= max(window, exact_chars):
        return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
    start, count, windows = 0, 0, 0
    while start < len(text):
        end = _cut(text, start, start + window)
        piece = text[start:end]
        count += len(tokenizer.encode(piece, add_special_tokens=add_special_tokens and start == 0))
        windows += 1
        # a window boundary can add a token (a prefix space marker): allow one per window before refusing
        if count - windows > max_tokens:
            where_text = f" {where}" if where else ""
            raise InvalidRequestError(
                f"The input{where_text} (at least {count - windows} tokens) is longer than the model's context "
                f"length ({context_len} tokens).",
                param,
            )
        start = end
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
