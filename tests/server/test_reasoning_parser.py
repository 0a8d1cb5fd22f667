"""ReasoningParser (sglkit/server/reasoning_parser.py): qwen3 and deepseek-r1, whole and streamed at every split.

Streamed pieces add up to the whole parse, with and without ``stream_reasoning``, and no piece ever shows a
partial ``<think>`` / ``</think>`` tag.
"""

from __future__ import annotations

import pytest

from sglkit.server.reasoning_parser import REASONING_PARSERS, ReasoningParser

# (model type, force_reasoning, output, expected reasoning, expected content)
CASES = [
    (
        "qwen3",
        False,
        "<think>\nAdd 2 and 3.\n</think>\n\nThe answer is 5.",
        "Add 2 and 3.\n",
        "The answer is 5.",
    ),
    ("qwen3", False, "The answer is 5.", None, "The answer is 5."),
    ("qwen3", False, "<think></think>\n\nFive.", None, "Five."),
    ("qwen3", False, "<think>\nstill thinking", "still thinking", ""),  # cut off: all reasoning
    ("qwen3", False, "a </think> b", None, "a </think> b"),  # the model's own text: not split
    ("qwen3", True, "Add 2 and 3.\n</think>\n\nFive.", "Add 2 and 3.\n", "Five."),  # template opened <think>
    ("qwen3", True, "  <think>\nAdd.</think>Five.", "Add.", "Five."),
    ("deepseek-r1", None, "Add 2 and 3.</think>\n\nFive.", "Add 2 and 3.", "Five."),
    ("deepseek-r1", None, "<think>\nAdd.\n</think>\n\nFive.", "Add.\n", "Five."),
    ("deepseek-r1", None, "no end tag, cut off at </thi", "no end tag, cut off at </thi", ""),
    (
        "deepseek-r1",
        None,
        "Think.</think>A <think> in content stays.",
        "Think.",
        "A <think> in content stays.",
    ),
]


def stream(parser: ReasoningParser, chunks: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    pieces = [parser.parse_stream_chunk(c) for c in chunks] + [parser.finish()]
    return "".join(r for r, _ in pieces), "".join(c for _, c in pieces), pieces


@pytest.mark.parametrize(("model", "force", "text", "reasoning", "content"), CASES)
def test_non_stream(model, force, text, reasoning, content):
    assert ReasoningParser(model, force_reasoning=force).parse_non_stream(text) == (reasoning, content)


@pytest.mark.parametrize(("model", "force", "text", "reasoning", "content"), CASES)
@pytest.mark.parametrize("stream_reasoning", [True, False])
def test_stream_every_split_point(model, force, text, reasoning, content, stream_reasoning):
    expected = (reasoning or "", content)
    for cut in range(len(text) + 1):
        parser = ReasoningParser(model, stream_reasoning, force)
        assert stream(parser, [text[:cut], text[cut:]])[:2] == expected, cut
    _, _, pieces = stream(ReasoningParser(model, stream_reasoning, force), list(text))
    assert "".join(r for r, _ in pieces) == expected[0]
    for r, c in pieces[:-1]:  # fed one character at a time, no piece before finish() ends in a partial tag
        for tag in ("<think>", "</think>"):
            assert not any(r.endswith(tag[:k]) or c.endswith(tag[:k]) for k in range(2, len(tag)))
    if not stream_reasoning and reasoning:
        assert sum(1 for r, _ in pieces if r) == 1, "reasoning comes in one piece"


def test_streamed_reasoning_arrives_before_the_end_tag():
    parser = ReasoningParser("qwen3")
    assert parser.parse_stream_chunk("<think>Let me") == ("Let me", "")
    assert parser.parse_stream_chunk(" see</th") == (" see", "")  # the partial tag is held back
    assert parser.parse_stream_chunk("ink>\n\nDone") == ("", "Done")
    assert not parser.in_reasoning


def test_unforced_qwen3_text_split_at_end_tag_when_nobody_says():
    """/separate_reasoning has no prompt: qwen3 text with </think> but no <think> is split there."""
    assert ReasoningParser("qwen3").parse_non_stream("Add.</think>\n\nFive.") == ("Add.", "Five.")


def test_unknown_parser():
    assert REASONING_PARSERS == ("qwen3", "deepseek-r1")
    with pytest.raises(ValueError, match="Unknown reasoning parser"):
        ReasoningParser("kimi")
