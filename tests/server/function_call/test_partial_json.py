"""partial_json.canonical_prefix (sglkit/server/function_call/partial_json.py): stable canonical prefixes.

Property: for any JSON value written in any whitespace style, the canonical prefix of every prefix of its text is
a prefix of ``json.dumps(value, ensure_ascii=False)``, grows monotonically, and is all of it once the text is.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglkit.server.function_call.partial_json import canonical_prefix

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(st.characters(codec="utf-8"), max_size=6)
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(value=JSON_VALUES, style=st.sampled_from(["compact", "indent", "ascii"]))
def test_prefixes_are_stable_and_complete(value, style):
    value = {"v": value}  # arguments are objects (a bare top-level number could always go on)
    text = {
        "compact": json.dumps(value, separators=(",", ":"), ensure_ascii=False),
        "indent": json.dumps(value, indent=2, ensure_ascii=False),
        "ascii": json.dumps(value),
    }[style]
    canonical = json.dumps(value, ensure_ascii=False)
    previous = ""
    for cut in range(len(text)):
        out, end = canonical_prefix(text[:cut])
        assert canonical.startswith(out), (text[:cut], out)
        assert out.startswith(previous)
        previous = out
    assert canonical_prefix(text) == (canonical, len(text))


def test_numbers_and_literals_wait_for_their_end():
    assert canonical_prefix('{"a": 1') == ('{"a": ', None)
    assert canonical_prefix('{"a": 12,') == ('{"a": 12, ', None)
    assert canonical_prefix('{"a": tr') == ('{"a": ', None)
    assert canonical_prefix('{"a": 1.50}') == ('{"a": 1.5}', 11)
    assert canonical_prefix('["x\\') == ('["x', None)  # a backslash waits for its escape
    assert canonical_prefix('["\\ud83d') == ('["', None)  # a high surrogate waits for its pair
    assert canonical_prefix('["\\ud83d\\ude00"]')[0] == '["\U0001f600"]'


@pytest.mark.parametrize("bad", ['{"a" 1}', "[1,]", '{"a": 1,}', "{a: 1}", "[01]", '"\\x"', "nul1", "[1 2]"])
def test_invalid_json_raises(bad):
    with pytest.raises(ValueError):
        canonical_prefix(bad)
