"""token_ids_logprob parsing (sglkit/runtime/frontend/logprob_options.py): SGLang's single / shared / per-input
shapes, "not set" values, and refusals naming the field."""

from __future__ import annotations

import pytest

from sglkit.runtime.frontend.logprob_options import TokenIdsLogprobError, pick_token_ids_logprob


def pick(value, index=0, num=1, is_batch=False, vocab=10, return_logprob=True):
    return pick_token_ids_logprob(value, index, num, is_batch, vocab, return_logprob)


@pytest.mark.parametrize("value", [None, []])
def test_not_set(value) -> None:
    assert pick(value) is None
    assert pick(value, return_logprob=False) is None


def test_single_shared_and_per_input() -> None:
    assert pick([1, 2]) == [1, 2]
    assert pick([1, 2], index=1, num=2, is_batch=True) == [1, 2]  # one list shared by the batch
    assert pick([[1], [2, 3]], index=1, num=2, is_batch=True) == [2, 3]
    assert pick([[1], []], index=1, num=2, is_batch=True) is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"value": [1, 10]}, r"Token id 10 in token_ids_logprob is out of vocabulary \[0, 10\)"),
        ({"value": [-1]}, "out of vocabulary"),
        ({"value": [True]}, "must contain integers"),
        ({"value": [1.5]}, "must contain integers"),
        ({"value": [[1]]}, "must contain integers"),  # nested lists only for a batch
        ({"value": [[1], [99]], "index": 1, "num": 2, "is_batch": True}, r"token_ids_logprob\[1\]"),
        ({"value": [[1], [2], [3]], "num": 2, "is_batch": True}, "has 3 lists for 2 inputs"),
        ({"value": [1], "return_logprob": False}, "needs return_logprob=true"),
    ],
)
def test_refusals(kwargs, message) -> None:
    with pytest.raises(TokenIdsLogprobError, match=message) as err:
        pick(**kwargs)
    assert err.value.param == "token_ids_logprob"
