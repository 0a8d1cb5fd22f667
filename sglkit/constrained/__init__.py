"""Constrained decoding: a request's grammar (json_schema, regex, ebnf, structural_tag) -> a vocab mask per step.

Front end: ``validate_grammar`` refuses a bad spec (400 naming the field) before anything is queued. Scheduler:
``create_grammar_backend`` compiles each distinct spec once (cached, on a worker thread), every request gets its own
``GrammarMatcher`` that advances with each accepted token, and the sampler applies the batch's mask.
"""

from sglkit.constrained.base import GRAMMAR_BACKENDS, GrammarBackend, GrammarError, GrammarMatcher
from sglkit.constrained.factory import create_grammar_backend, validate_grammar

__all__ = [
    "GRAMMAR_BACKENDS",
    "GrammarBackend",
    "GrammarError",
    "GrammarMatcher",
    "create_grammar_backend",
    "validate_grammar",
]
