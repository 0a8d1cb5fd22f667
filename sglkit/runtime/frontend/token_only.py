"""Token-in, token-out mode (front end, before the scheduler): what a server without a tokenizer refuses.

With ``--skip-tokenizer-init`` (``sglkit.Engine(skip_tokenizer_init=True)``) no process loads a tokenizer:
requests carry ``input_ids``, answers carry ``output_ids`` (``text`` stays empty) and logprob entries carry no text.
Whatever needs the tokenizer is refused before anything is queued, with a ``TokenizerRequiredError`` naming the
parameter (HTTP 400):

- ``text`` prompts (send ``input_ids``);
- ``stop`` strings and ``stop_regex``: they match decoded text (``stop_token_ids`` work);
- grammars (``json_schema``, ``regex``, ``ebnf``, ``structural_tag``): the grammar backend compiles them against
  the tokenizer's vocabulary;
- routes and options that read or write text: ``return_text_in_logprobs``, the OpenAI chat and completions routes,
  /tokenize, /detokenize, /tokenizer_info (``require_tokenizer``).

Still working: EOS (ids from config.json and generation_config.json), ``stop_token_ids``, ``ignore_eos``,
``min_new_tokens`` (it masks those EOS ids; SGLang refuses it, as its EOS ids come from the tokenizer), sampling,
seeds, ``n``, logprobs and streaming. ``skip_special_tokens``, ``spaces_between_special_tokens`` and
``no_stop_trim`` only shape text: accepted, without effect.
"""

from __future__ import annotations

from typing import Any

from sglkit.core.sampling_params import GRAMMAR_FIELDS, SamplingParams
from sglkit.runtime.frontend.errors import InvalidRequestError

__all__ = ["FLAG", "TokenizerRequiredError", "check_token_only_request", "require_tokenizer"]

FLAG = "--skip-tokenizer-init"
"""The server flag (``skip_tokenizer_init=True`` for the Engine) that turns this mode on."""

_NO_TOKENIZER = f"the server runs with {FLAG} (skip_tokenizer_init=True: token-in, token-out, no tokenizer)"


class TokenizerRequiredError(InvalidRequestError):
    """The request needs a tokenizer and the server has none; ``param`` names the field (HTTP 400)."""


def check_token_only_request(text: Any, params: SamplingParams) -> None:
    """Refuse what a tokenizer-free server cannot do for one generate input (``params`` normalized).

    Raises ``TokenizerRequiredError`` for a text prompt, stop strings, ``stop_regex`` or a grammar.
    """
    if text is not None:
        raise TokenizerRequiredError(
            f"text requires input_ids when {_NO_TOKENIZER}: send the prompt's token ids as input_ids.", "text"
        )
    if params.stop:
        raise TokenizerRequiredError(
            f"stop={params.stop!r} is unavailable: stop strings match decoded text, and {_NO_TOKENIZER}. "
            "Use stop_token_ids.",
            "stop",
        )
    if params.stop_regex:
        raise TokenizerRequiredError(
            f"stop_regex={params.stop_regex!r} is unavailable: it matches decoded text, and {_NO_TOKENIZER}. "
            "Use stop_token_ids.",
            "stop_regex",
        )
    for name in GRAMMAR_FIELDS:
        if getattr(params, name):
            raise TokenizerRequiredError(
                f"{name} is unavailable: constrained decoding compiles the grammar against the tokenizer's "
                f"vocabulary, and {_NO_TOKENIZER}.",
                name,
            )


def require_tokenizer(tokenizer: Any, feature: str, param: str | None = None) -> None:
    """Raise ``TokenizerRequiredError`` (naming ``param``) when ``tokenizer`` is None: ``feature`` needs one.

    ``feature`` is what the caller asked for, e.g. ``"/v1/chat/completions"`` or ``"return_text_in_logprobs"``.
    """
    if tokenizer is None:
        raise TokenizerRequiredError(
            f"{feature} needs a tokenizer, and {_NO_TOKENIZER}: send token ids (input_ids) and read output_ids, "
            f"or restart without {FLAG}.",
            param,
        )
