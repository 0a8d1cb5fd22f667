"""Choosing a grammar backend by name (front end and scheduler -> sglkit.constrained's backends).

``validate_grammar`` is the front end's check of a request's spec; ``create_grammar_backend`` builds the
scheduler's backend for ``--grammar-backend``. Backends are imported here, lazily, so that importing sglkit never
loads xgrammar.
"""

from __future__ import annotations

from sglkit.constrained.base import GRAMMAR_BACKENDS, GrammarBackend, GrammarError, Spec


def validate_grammar(spec: Spec | None, backend: str = "xgrammar", any_whitespace: bool = False) -> None:
    """Raise ``GrammarError`` (naming the field) when ``spec`` cannot be used on a server with ``backend``.

    Parses the grammar without a tokenizer: cheap enough for the front end, and it catches invalid JSON, invalid
    JSON schemas, invalid regexes and EBNF syntax errors before a request is queued.
    """
    if spec is None:
        return
    if backend == "none":
        raise GrammarError(
            spec[0],
            f"{spec[0]} needs constrained decoding, which is disabled on this server (--grammar-backend none).",
        )
    from sglkit.constrained.xgrammar_backend import build_grammar

    build_grammar(spec, any_whitespace=any_whitespace)


def create_grammar_backend(
    backend: str,
    tokenizer,
    vocab_size: int,
    stop_token_ids: list[int] | set[int],
    any_whitespace: bool = False,
) -> GrammarBackend | None:
    """The scheduler's grammar backend by ``--grammar-backend`` name (None for "none"); imports it lazily."""
    if backend == "none":
        return None
    if backend == "xgrammar":
        from sglkit.constrained.xgrammar_backend import XGrammarBackend

        return XGrammarBackend(tokenizer, vocab_size, stop_token_ids, any_whitespace=any_whitespace)
    raise ValueError(f"Unknown grammar backend {backend!r}; choose from {', '.join(GRAMMAR_BACKENDS)}.")
