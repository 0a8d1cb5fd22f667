"""Embedding input processing (sglkit/runtime/embedding_input.py): normalize, tokenize, refuse with the field named."""

from __future__ import annotations

import pytest

from sglkit.runtime.frontend.embedding_input import EmbeddingInput, build_embedding_requests
from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.testing.tiny_embedding_models import make_bert_tokenizer

CONTEXT = 32


@pytest.fixture(scope="module")
def tokenizer():
    return make_bert_tokenizer()


def build(tokenizer, **kwargs):
    params = {k: kwargs.pop(k) for k in ("text_param", "ids_param", "max_batch_size") if k in kwargs}
    return build_embedding_requests(EmbeddingInput(**kwargs), tokenizer, len(tokenizer), CONTEXT, **params)


def test_text_single_and_batch(tokenizer):
    is_batch, reqs = build(tokenizer, text="hello world")
    assert not is_batch and len(reqs) == 1
    assert reqs[0].input_ids == tokenizer("hello world")["input_ids"] and reqs[0].input_text == "hello world"
    assert reqs[0].input_ids[0] == tokenizer.cls_token_id and reqs[0].input_ids[-1] == tokenizer.sep_token_id
    is_batch, reqs = build(tokenizer, text=["a", "b c"], rid=["x", "y"])
    assert is_batch and [r.rid for r in reqs] == ["x", "y"]
    assert [r.input_ids for r in reqs] == [tokenizer(t)["input_ids"] for t in ("a", "b c")]


def test_token_ids_single_and_batch(tokenizer):
    assert build(tokenizer, input_ids=[2, 7, 3])[1][0].input_ids == [2, 7, 3]
    is_batch, reqs = build(tokenizer, input_ids=[[2, 7, 3], [2, 3]], rid="r")
    assert (
        is_batch
        and [r.input_ids for r in reqs] == [[2, 7, 3], [2, 3]]
        and [r.rid for r in reqs] == ["r-0", "r-1"]
    )


@pytest.mark.parametrize(
    ("kwargs", "param", "message"),
    [
        ({"text": ""}, "text", "The input text is empty."),
        ({"text": ["ok", ""]}, "text", r"text\[1\] is empty"),
        ({"text": []}, "text", "The batch of inputs is empty."),
        ({"input_ids": []}, "input_ids", "non-empty list"),
        ({"input_ids": [[2, 3], []]}, "input_ids", "non-empty list"),
        ({"input_ids": [2, 99999]}, "input_ids", "out of vocabulary"),
        ({"text": "word " * 40}, "text", r"longer than the model's context length \(32 tokens\)"),
        ({"text": ["ok", "word " * 40]}, "text", r"The input text\[1\] \(\d+ tokens\) is longer"),
        ({"text": ["a"] * 5, "max_batch_size": 4}, "text", "The batch has 5 inputs; at most 4 are allowed"),
        ({"text": "a", "input_ids": [2]}, "text", "not both"),
        ({}, "text", "Either text or input_ids"),
        ({"text": 3}, "text", "string or a list of strings"),
        ({"text": ["a", 3]}, "text", r"text\[1\] must be a string"),
        ({"text": ["a", "b"], "rid": ["x"]}, "rid", "rid has 1 entries for 2 inputs"),
        ({"text": "", "text_param": "input"}, "input", "empty"),
    ],
)
def test_refusals_name_the_field(tokenizer, kwargs, param, message):
    with pytest.raises(InvalidRequestError, match=message) as err:
        build(tokenizer, **kwargs)
    assert err.value.param == param
