"""Logprob options of a generate call (front end, while ``input_processor`` builds each request): ``token_ids_logprob``.

SGLang's shapes: a single input takes a list of token ids; a batch takes one list shared by every input or one list
per input. ``None`` and ``[]`` mean "not set". The ids must be vocabulary ids and need ``return_logprob``; every
refusal is an ``InvalidRequestError`` naming ``token_ids_logprob``.
"""

from __future__ import annotations

from typing import Any

PARAM = "token_ids_logprob"


class TokenIdsLogprobError(ValueError):
    """A bad ``token_ids_logprob``; ``param`` names it (``input_processor`` turns it into a 400)."""

    param = PARAM


def _check_ids(ids: Any, vocab_size: int, where: str) -> list[int]:
    if not isinstance(ids, list):
        raise TokenIdsLogprobError(f"{where} must be a list of token ids.")
    for token_id in ids:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise TokenIdsLogprobError(f"{where} must contain integers, got {token_id!r}.")
        if not 0 <= token_id < vocab_size:
            raise TokenIdsLogprobError(
                f"Token id {token_id} in {where} is out of vocabulary [0, {vocab_size})."
            )
    return list(ids)


def pick_token_ids_logprob(
    value: Any, index: int, num_inputs: int, is_batch: bool, vocab_size: int, return_logprob: bool
) -> list[int] | None:
    """Input ``index``'s ids of ``token_ids_logprob`` (validated), or None when not set."""
    if not value:
        return None
    per_input = is_batch and isinstance(value, list) and isinstance(value[0], list)
    if per_input:
        if len(value) != num_inputs:
            raise TokenIdsLogprobError(f"{PARAM} has {len(value)} lists for {num_inputs} inputs.")
        ids = _check_ids(value[index], vocab_size, f"{PARAM}[{index}]")
    else:
        ids = _check_ids(value, vocab_size, PARAM)
    if not ids:
        return None
    if not return_logprob:
        raise TokenIdsLogprobError(f"{PARAM} needs return_logprob=true.")
    return ids
