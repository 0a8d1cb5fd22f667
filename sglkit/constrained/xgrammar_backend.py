"""The xgrammar grammar backend (scheduler side of sglkit.constrained): spec -> xgrammar grammar -> matcher + bitmask.

xgrammar compiles a grammar against the tokenizer's vocabulary once (``GrammarCompiler``); a ``GrammarMatcher`` per
request fills a packed bitmask of the tokens allowed next (``[B, ceil(V / 32)]`` int32, bit set = allowed), which
``apply_token_bitmask_inplace`` applies to the logits. JSON schemas compile with fixed separators (``", "`` and
``": "``) and no free whitespace unless ``--constrained-json-any-whitespace``: a weak model offered free whitespace
can emit it until ``max_tokens``.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from sglkit.constrained.base import GrammarBackend, GrammarError, GrammarMatcher, Spec, clean_native_message


def _load_json(param: str, value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, RecursionError) as e:
        raise GrammarError(param, f"{param} is not valid JSON: {e}") from None


_LENGTH_KEYS = ("minLength", "maxLength")
_STRING_SHAPE_KEYS = ("pattern", "format", "enum", "const")


def json_safe_string_lengths(schema: Any) -> Any:
    """A copy of ``schema`` where length-bounded strings become an equivalent ``pattern`` without control chars.

    xgrammar (0.2.x) compiles ``minLength``/``maxLength`` strings to a character class that admits raw control
    characters (invalid JSON: ``json.loads`` refuses them) and UTF-16 surrogates (invalid UTF-8). As a pattern,
    the same bounds exclude control characters, surrogates, quotes and backslashes, so the output is always
    valid JSON (such strings cannot hold escapes).
    """
    if isinstance(schema, list):
        return [json_safe_string_lengths(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: json_safe_string_lengths(v) for k, v in schema.items()}
    bounded = any(k in out for k in _LENGTH_KEYS) and not any(k in out for k in _STRING_SHAPE_KEYS)
    if out.get("type") == "string" and bounded:
        low = out.pop("minLength", 0)
        high = out.pop("maxLength", "")
        if isinstance(low, int) and isinstance(high, (int, str)):
            out["pattern"] = '^[^\\x00-\\x1f"\\\\\\ud800-\\udfff]{' + f"{low},{high}" + "}$"
    return out


def build_grammar(spec: Spec, any_whitespace: bool = False):
    """``(field, value)`` -> ``xgrammar.Grammar``; raises ``GrammarError`` naming ``field`` for a bad spec."""
    import xgrammar as xgr

    kind, value = spec
    try:
        if kind == "json_schema":
            schema = _load_json(kind, value)
            if not isinstance(schema, dict):
                raise GrammarError(
                    kind, f"json_schema must be a JSON object (a JSON Schema), got {value[:80]!r}"
                )
            schema = json_safe_string_lengths(schema)
            return xgr.Grammar.from_json_schema(
                json.dumps(schema), any_whitespace=any_whitespace, strict_mode=True
            )
        if kind == "regex":
            return xgr.Grammar.from_regex(value)
        if kind == "ebnf":
            return xgr.Grammar.from_ebnf(value)
        if kind == "structural_tag":
            return _structural_tag_grammar(xgr, value)
    except GrammarError:
        raise
    except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError/its own errors for bad specs
        raise GrammarError(kind, f"Invalid {kind}: {clean_native_message(str(e))}") from None
    raise GrammarError(kind, f"{kind} is not a grammar field")


def _structural_tag_grammar(xgr, value: str):
    """SGLang's legacy form ``{"type": "structural_tag", "structures": [{begin, schema, end}], "triggers": [...]}``
    or xgrammar's current one (``{"type": "structural_tag", "format": {...}}``)."""
    tag = _load_json("structural_tag", value)
    if not isinstance(tag, dict):
        raise GrammarError("structural_tag", "structural_tag must be a JSON object")
    if "structures" not in tag:
        return xgr.Grammar.from_structural_tag(json.dumps(tag))
    structures, triggers = tag.get("structures"), tag.get("triggers")
    if not isinstance(structures, list) or not isinstance(triggers, list) or not triggers:
        raise GrammarError(
            "structural_tag", "structural_tag needs a list of structures and a non-empty list of triggers"
        )
    items = []
    for s in structures:
        if not isinstance(s, dict) or not {"begin", "end"} <= s.keys():
            raise GrammarError("structural_tag", "each structure needs begin, schema and end")
        schema = s.get("schema", s.get("parameters", {}))
        items.append(xgr.StructuralTagItem(begin=s["begin"], schema=json.dumps(schema), end=s["end"]))
    return xgr.Grammar.from_structural_tag(items, triggers)


class XGrammarMatcher(GrammarMatcher):
    """A request's ``xgrammar.GrammarMatcher``."""

    def __init__(self, matcher) -> None:
        self._matcher = matcher

    def accept_token(self, token_id: int) -> bool:
        """Advance by ``token_id``; False (state unchanged) when the grammar forbids it."""
        return bool(self._matcher.accept_token(int(token_id)))

    def fill_vocab_mask(self, mask: torch.Tensor, row: int) -> None:
        """Set row ``row`` of the packed bitmask to the tokens allowed next."""
        self._matcher.fill_next_token_bitmask(mask, row)

    def is_terminated(self) -> bool:
        """True once the grammar's stop token was accepted."""
        return bool(self._matcher.is_terminated())


class XGrammarBackend(GrammarBackend):
    """Grammars compiled by xgrammar against the served tokenizer (the model's vocabulary size, padding included)."""

    name = "xgrammar"

    def __init__(
        self, tokenizer, vocab_size: int, stop_token_ids: list[int] | set[int], any_whitespace: bool = False
    ) -> None:
        super().__init__()
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        self.any_whitespace = any_whitespace
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_token_ids) or None
        )
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def _compile(self, spec: Spec) -> Any:
        return self._compiler.compile_grammar(build_grammar(spec, self.any_whitespace))

    def new_matcher(self, compiled: Any) -> GrammarMatcher:
        """A fresh matcher at the grammar's start."""
        return XGrammarMatcher(self._xgr.GrammarMatcher(compiled))

    def allocate_vocab_mask(self, batch_size: int) -> torch.Tensor:
        """[batch_size, ceil(V / 32)] int32, every bit set (every token allowed)."""
        return self._xgr.allocate_token_bitmask(batch_size, self.vocab_size)

    def apply_vocab_mask(self, logits: torch.Tensor, mask: torch.Tensor, rows: list[int]) -> None:
        """logits: [B, V] float32; tokens whose bit is clear in ``rows`` become -inf (in place)."""
        mask = mask.to(logits.device, non_blocking=True)
        self._xgr.apply_token_bitmask_inplace(logits, mask, vocab_size=self.vocab_size, indices=rows)
