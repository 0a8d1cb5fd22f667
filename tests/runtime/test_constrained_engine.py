"""Constrained decoding through sglkit.Engine: random schemas and regexes on a random-weight tiny model.

Every constrained output must parse and validate (JSON schema) or fully match (regex), greedy and sampled, batched
with unconstrained requests, streamed, across retraction and chunked prefill; bad grammars are refused up front.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import sglkit
from sglkit.core.messages import TokenizedGenerateReq
from sglkit.core.sampling_params import SamplingParams
from tests.runtime.test_engine import check_leak

PROMPTS = ["The capital of France is", "Hello", "Write JSON:", "1 2 3"]
# Derandomized (the same examples every run, no example database) and no shrinking, so CI time is bounded.
QUICK = dict(
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
)
SETTINGS = settings(max_examples=20, **QUICK)


@pytest.fixture(scope="module")
def llm(llama_path):
    with sglkit.Engine(model_path=llama_path, max_total_tokens=4096, random_seed=0) as engine:
        yield engine


# ----------------------------------------------------------------------------- random schemas
_names = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
_leaf = st.one_of(
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 500),
    ),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(lambda hi: {"type": "string", "maxLength": hi}, st.integers(0, 6)),
    st.builds(
        lambda vals: {"enum": vals},
        st.lists(st.text("xyz", min_size=1, max_size=3), min_size=1, max_size=3, unique=True),
    ),
)


def _object(children):
    return st.dictionaries(_names, children, min_size=1, max_size=3).map(
        lambda props: {"type": "object", "properties": props, "required": sorted(props)}
    )


def _array(children):
    return st.builds(
        lambda item, hi: {"type": "array", "items": item, "maxItems": hi}, children, st.integers(0, 2)
    )


schemas = _object(st.recursive(_leaf, lambda c: st.one_of(_object(c), _array(c)), max_leaves=4))

# ----------------------------------------------------------------------------- random regexes
_atom = st.one_of(
    st.sampled_from(["a", "b", "x", "7", "-", " ", "ok"]),
    st.sampled_from(["[a-c]", "[0-9]", "[xyz]", "(yes|no)", "(cat|dog|bird)"]),
)
_piece = st.builds(lambda a, q: a + q, _atom, st.sampled_from(["", "?", "{1,3}", "{2}", "{0,2}"]))
regexes = st.lists(_piece, min_size=1, max_size=5).map("".join)


def _params(spec: dict, greedy: bool, seed: int) -> dict:
    base = {"max_new_tokens": 512}  # the tiny tokenizer spends about a token per character
    if greedy:
        return {**base, "temperature": 0, **spec}
    return {**base, "temperature": 0.9, "top_p": 0.95, "sampling_seed": seed, **spec}


def _check_json(text: str, schema: dict, finish: dict) -> None:
    assert finish["type"] == "stop", (text, finish)
    jsonschema.validate(json.loads(text), schema)


@SETTINGS
@given(schema=schemas, greedy=st.booleans(), seed=st.integers(0, 1000), prompt=st.sampled_from(PROMPTS))
def test_random_schemas_validate_batched_with_unconstrained(llm, schema, greedy, seed, prompt):
    spec = {"json_schema": json.dumps(schema)}
    outs = llm.generate(
        [prompt, prompt, "Unconstrained text"],
        [_params(spec, greedy, seed), _params(spec, not greedy, seed + 1), {"max_new_tokens": 8}],
    )
    for out in outs[:2]:
        _check_json(out["text"], schema, out["meta_info"]["finish_reason"])
    assert outs[2]["meta_info"]["completion_tokens"] >= 1
    check_leak(llm)


@SETTINGS
@given(pattern=regexes, greedy=st.booleans(), seed=st.integers(0, 1000), prompt=st.sampled_from(PROMPTS))
def test_random_regexes_fully_match(llm, pattern, greedy, seed, prompt):
    out = llm.generate(prompt, _params({"regex": pattern}, greedy, seed))
    assert out["meta_info"]["finish_reason"]["type"] == "stop", out
    assert re.fullmatch(pattern, out["text"]), (pattern, out["text"])


@settings(max_examples=8, **QUICK)
@given(schema=schemas)
def test_streamed_output_equals_the_whole(llm, schema):
    params = _params({"json_schema": json.dumps(schema)}, True, 0)
    whole = llm.generate("Hello", params)
    chunks = list(llm.generate("Hello", params, stream=True))
    assert "".join(c["text"] for c in chunks) == whole["text"]
    _check_json(whole["text"], schema, chunks[-1]["meta_info"]["finish_reason"])


def test_ebnf_structural_tag_and_n(llm):
    outs = llm.generate("Hi", {"ebnf": 'root ::= "a" ("b" | "c"){1,4} "."', "n": 3, "temperature": 1.0})
    assert len(outs) == 3
    for out in outs:
        assert re.fullmatch(r"a[bc]{1,4}\.", out["text"]), out
    tag = {
        "type": "structural_tag",
        "structures": [
            {
                "begin": "<f>",
                "schema": {"type": "object", "properties": {"a": {"type": "boolean"}}, "required": ["a"]},
                "end": "</f>",
            }
        ],
        "triggers": ["<f>"],
    }
    out = llm.generate("Hi", {"structural_tag": json.dumps(tag), "max_new_tokens": 24, "temperature": 0})
    for body in re.findall(r"<f>(.*?)</f>", out["text"]):
        assert json.loads(body) in ({"a": True}, {"a": False})


def test_grammar_end_finishes_even_with_ignore_eos(llm):
    out = llm.generate(
        "Hi", {"regex": "(yes|no)", "ignore_eos": True, "max_new_tokens": 50, "temperature": 0}
    )
    assert out["text"] in ("yes", "no")
    assert out["meta_info"]["finish_reason"]["type"] == "stop"


def test_same_greedy_output_with_chunked_prefill_and_retraction(llama_path):
    """Long prompts prefilled in chunks, and a KV pool so small that decoding retracts requests."""
    item = {"type": "integer", "minimum": 10, "maximum": 99}
    schema = {
        "type": "object",
        "properties": {"v": {"type": "array", "items": item, "minItems": 20, "maxItems": 20}},
        "required": ["v"],
    }
    params = {"json_schema": json.dumps(schema), "temperature": 0, "max_new_tokens": 100}
    prompts = [f"Request {i}: " + "word " * (3 + i) for i in range(10)]
    with sglkit.Engine(model_path=llama_path, random_seed=0) as big:
        want = [o["text"] for o in big.generate(prompts, params)]
    with sglkit.Engine(
        model_path=llama_path, max_total_tokens=200, chunked_prefill_size=8, random_seed=0
    ) as small:
        got = small.generate(prompts, params)
        assert small.scheduler.stats.num_retracted_reqs > 0
        check_leak(small)
    assert [o["text"] for o in got] == want
    for text in want:
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"json_schema": "{not json"}, "json_schema"),
        ({"json_schema": '{"type": 12}'}, "json_schema"),
        ({"json_schema": "[1, 2]"}, "json_schema"),
        ({"regex": "[a-"}, "regex"),
        ({"ebnf": "root ::= undefined_rule"}, "ebnf"),
        ({"structural_tag": '{"structures": [], "triggers": []}'}, "structural_tag"),
        ({"regex": "a", "ebnf": 'root ::= "a"'}, "ebnf"),
        ({"json_schema": 5}, "json_schema"),
    ],
)
def test_bad_grammars_are_refused_before_queueing(llm, params, field):
    with pytest.raises(ValueError) as err:
        llm.generate("Hi", params)
    assert err.value.param == field, err.value
    assert llm.scheduler.is_idle()
    assert llm.generate("Hi", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] >= 1


def test_empty_grammar_means_unset(llm):
    out = llm.generate("Hi", {"regex": "", "json_schema": "", "max_new_tokens": 3, "ignore_eos": True})
    assert out["meta_info"]["completion_tokens"] == 3


def test_abort_while_the_grammar_compiles_leaves_nothing(llm):
    scheduler = llm.scheduler
    params = SamplingParams.from_dict({"regex": "[a-z]{3,9}( [a-z]{2,5}){0,40}", "max_new_tokens": 40})
    params.normalize()
    assert scheduler.add_request(TokenizedGenerateReq("g1", llm.tokenizer.encode("Hello"), params)) is None
    assert not scheduler.is_idle()
    outs = scheduler.abort_request("g1")
    assert [o.rid for o in outs] == ["g1"] and outs[0].meta_info["finish_reason"] == {"type": "abort"}
    assert scheduler.is_idle()
    check_leak(llm)


def test_grammar_compiles_once_per_spec(llm):
    backend = llm.scheduler.grammar_queue.backend
    spec = {"regex": "(red|green|blue) (one|two)", "max_new_tokens": 8, "temperature": 0}
    llm.generate("Hi", spec)
    before = backend.num_cached
    llm.generate(["Hi", "Hello"], [spec, spec])
    assert backend.num_cached == before
