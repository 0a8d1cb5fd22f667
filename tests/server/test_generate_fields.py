"""SGLang's /generate fields (sglkit/server/generate_request.py): each one implemented or refused by name.

Pure checks first (``is_set``, ``check_fields``, ``add_logprob_texts``), then the shared real server:
``return_text_in_logprobs`` (texts equal the tokenizer's), ``token_ids_logprob`` (consistent with the sampled and
prompt tokens' own logprobs, and a full distribution over the vocabulary), and the 400s.
"""

from __future__ import annotations

import json
import math

import pytest
import requests
from transformers import AutoTokenizer

from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.generate_request import (
    UNSUPPORTED_FIELDS,
    GenerateReqInput,
    add_logprob_texts,
    check_fields,
    is_set,
)

PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "max_new_tokens": 6}


@pytest.fixture(scope="module")
def hf_tokenizer(server_model_path):
    """The HF tokenizer of the shared server's checkpoint."""
    return AutoTokenizer.from_pretrained(server_model_path)


def post(server, **body) -> requests.Response:
    """POST /generate with ``body``."""
    return requests.post(f"{server.base_url}/generate", json=body)


def ok(server, **body) -> dict:
    """POST /generate and return the JSON answer (asserting 200)."""
    response = post(server, **body)
    assert response.status_code == 200, response.text
    return response.json()


# ----------------------------------------------------------------------------- pure
@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        (None, None, False),
        (False, False, False),
        (True, True, False),
        ([], None, False),
        ({}, None, False),
        ("", None, False),
        ([None, None], None, False),
        ([None, "a.png"], None, True),
        ("a.png", None, True),
        (True, False, True),
        (False, True, True),
        (3, 0, True),
    ],
)
def test_is_set(value, default, expected) -> None:
    assert is_set(value, default) is expected


def test_check_fields_refuses_unknown_and_set_unsupported_fields() -> None:
    check_fields({"text": "x", "image_data": None, "lora_path": [None], "return_hidden_states": False})
    check_fields({"text": "x", "log_metrics": True, "modalities": [], "session_params": {}})
    with pytest.raises(InvalidRequestError, match="^bogus is not a field of /generate") as err:
        check_fields({"bogus": 1})
    assert err.value.param == "bogus"
    with pytest.raises(
        InvalidRequestError, match="^image_data is not supported: sglkit serves text-only"
    ) as err:
        check_fields({"image_data": "a.png"})
    assert err.value.param == "image_data"


def test_every_sglang_field_is_implemented_or_listed() -> None:
    """The two tables do not overlap; the descriptive fields are documented on the model."""
    assert not set(UNSUPPORTED_FIELDS) & set(GenerateReqInput.model_fields)
    for name in ("session_id", "conversation_id", "external_trace_header", "received_time"):
        assert "no effect" in GenerateReqInput.model_fields[name].description


def test_add_logprob_texts_fills_every_entry() -> None:
    meta = {
        "input_token_logprobs": [[None, 1, None], [-0.5, 2, None]],
        "input_top_logprobs": [None, [[-0.5, 2, None]]],
        "output_token_logprobs": [[-0.1, 3, None]],
        "output_top_logprobs": [[[-0.1, 3, None], [-2.0, 4, None]]],
        "output_token_ids_logprobs": [[[-5.0, 9, None]]],
        "id": "r",
    }
    add_logprob_texts(meta, lambda token_id: f"<{token_id}>")
    assert meta["input_token_logprobs"] == [[None, 1, "<1>"], [-0.5, 2, "<2>"]]
    assert meta["input_top_logprobs"] == [None, [[-0.5, 2, "<2>"]]]
    assert meta["output_top_logprobs"] == [[[-0.1, 3, "<3>"], [-2.0, 4, "<4>"]]]
    assert meta["output_token_ids_logprobs"] == [[[-5.0, 9, "<9>"]]]
    assert meta["id"] == "r"


# ----------------------------------------------------------------------------- return_text_in_logprobs
def test_return_text_in_logprobs(server, hf_tokenizer) -> None:
    body = {"text": PROMPT, "sampling_params": GREEDY, "return_logprob": True, "logprob_start_len": 0}
    plain = ok(server, **body, top_logprobs_num=2)
    texts = ok(server, **body, top_logprobs_num=2, return_text_in_logprobs=True)
    assert plain["output_ids"] == texts["output_ids"]
    meta, plain_meta = texts["meta_info"], plain["meta_info"]

    def text(token_id: int) -> str:
        return hf_tokenizer.decode([token_id])

    for key in ("input_token_logprobs", "output_token_logprobs"):
        assert [e[:2] for e in meta[key]] == [e[:2] for e in plain_meta[key]]
        assert all(e[2] == text(e[1]) for e in meta[key])
        assert all(e[2] is None for e in plain_meta[key])
    assert meta["input_token_logprobs"][0][:2] == [None, hf_tokenizer.bos_token_id]
    assert meta["input_token_logprobs"][0][2] == hf_tokenizer.bos_token  # special tokens keep their text
    for row in meta["output_top_logprobs"]:
        assert all(e[2] == text(e[1]) for e in row)


def test_return_text_in_logprobs_streamed(server, hf_tokenizer) -> None:
    body = {
        "text": PROMPT,
        "sampling_params": GREEDY,
        "return_logprob": True,
        "return_text_in_logprobs": True,
    }
    with requests.post(f"{server.base_url}/generate", json={**body, "stream": True}, stream=True) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    entries = last["meta_info"]["output_token_logprobs"]
    assert [e[1] for e in entries] == last["output_ids"]
    assert [e[2] for e in entries] == [hf_tokenizer.decode([t]) for t in last["output_ids"]]


# ----------------------------------------------------------------------------- token_ids_logprob
def test_token_ids_logprob_agrees_with_the_tokens_own_logprobs(server, hf_tokenizer) -> None:
    prompt_ids = hf_tokenizer.encode(PROMPT)
    first = ok(server, text=PROMPT, sampling_params=GREEDY)["output_ids"]
    ids = sorted(set(prompt_ids + first))
    out = ok(
        server,
        text=PROMPT,
        sampling_params=GREEDY,
        return_logprob=True,
        logprob_start_len=0,
        token_ids_logprob=ids,
    )
    meta = out["meta_info"]
    assert out["output_ids"] == first
    assert len(meta["output_token_ids_logprobs"]) == len(first)
    for (logprob, token_id, _), row in zip(meta["output_token_logprobs"], meta["output_token_ids_logprobs"]):
        assert [e[1] for e in row] == ids
        assert dict((e[1], e[0]) for e in row)[token_id] == pytest.approx(logprob, abs=1e-5)
    inputs = meta["input_token_ids_logprobs"]
    assert inputs[0] is None and len(inputs) == len(prompt_ids)  # the first prompt token has no logprob
    for (logprob, token_id, _), row in zip(meta["input_token_logprobs"][1:], inputs[1:]):
        assert dict((e[1], e[0]) for e in row)[token_id] == pytest.approx(logprob, abs=1e-5)


def test_token_ids_logprob_over_the_vocabulary_sums_to_one(server) -> None:
    vocab = requests.get(f"{server.base_url}/tokenizer_info").json()["vocab_size"]
    out = ok(
        server,
        text=PROMPT,
        sampling_params={"temperature": 0, "max_new_tokens": 2},
        return_logprob=True,
        token_ids_logprob=list(range(vocab)),
    )
    for row in out["meta_info"]["output_token_ids_logprobs"]:
        assert sum(math.exp(e[0]) for e in row) == pytest.approx(1.0, abs=1e-3)
    assert "input_token_ids_logprobs" in out["meta_info"]


def test_token_ids_logprob_per_input_in_a_batch(server) -> None:
    out = ok(
        server,
        text=[PROMPT, "Hello"],
        sampling_params={"temperature": 0, "max_new_tokens": 2},
        return_logprob=True,
        token_ids_logprob=[[5, 6], [7]],
    )
    assert [e[1] for e in out[0]["meta_info"]["output_token_ids_logprobs"][0]] == [5, 6]
    assert [e[1] for e in out[1]["meta_info"]["output_token_ids_logprobs"][0]] == [7]
    shared = ok(
        server, text=[PROMPT, "Hello"], sampling_params=GREEDY, return_logprob=True, token_ids_logprob=[5]
    )
    assert all([e[1] for e in r["meta_info"]["output_token_ids_logprobs"][0]] == [5] for r in shared)


def test_token_ids_logprob_absent_when_not_asked(server) -> None:
    for value in (None, []):
        out = ok(server, text=PROMPT, sampling_params=GREEDY, return_logprob=True, token_ids_logprob=value)
        assert "output_token_ids_logprobs" not in out["meta_info"]


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"token_ids_logprob": [1, 10**6]}, "token_ids_logprob", "out of vocabulary"),
        ({"token_ids_logprob": [-1]}, "token_ids_logprob", "out of vocabulary"),
        ({"token_ids_logprob": ["a"]}, "token_ids_logprob", ""),
        ({"token_ids_logprob": [1], "return_logprob": False}, "token_ids_logprob", "return_logprob"),
        ({"return_text_in_logprobs": "yes"}, "return_text_in_logprobs", ""),
        ({"image_data": "data:image/png;base64,AAAA"}, "image_data", "text-only"),
        ({"modalities": ["image"]}, "modalities", "text-only"),
        ({"lora_path": "adapter"}, "lora_path", "LoRA"),
        ({"return_hidden_states": True}, "return_hidden_states", "not supported"),
        ({"session_params": {"id": "s"}}, "session_params", "sessions"),
        ({"priority": 1}, "priority", "priority"),
        ({"custom_logit_processor": "x"}, "custom_logit_processor", "not supported"),
        ({"no_such_field": 1}, "no_such_field", "not a field of /generate"),
    ],
)
def test_refusals_name_the_field(server, extra, param, fragment) -> None:
    body = {"text": PROMPT, "sampling_params": GREEDY, "return_logprob": True, **extra}
    response = post(server, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert post(server, text=PROMPT, sampling_params=GREEDY).status_code == 200


def test_token_ids_logprob_batch_length_mismatch(server) -> None:
    body = {"text": [PROMPT, "Hi"], "sampling_params": GREEDY, "return_logprob": True}
    response = post(server, **body, token_ids_logprob=[[1], [2], [3]])
    assert response.status_code == 400 and response.json()["error"]["param"] == "token_ids_logprob"


def test_unset_and_descriptive_fields_are_accepted(server) -> None:
    """What SGLang's clients send for fields they do not use (nulls, defaults), and fields describing the caller."""
    body = {
        "text": PROMPT,
        "sampling_params": GREEDY,
        "image_data": None,
        "modalities": [],
        "lora_path": [None],
        "return_hidden_states": False,
        "log_metrics": True,
        "routed_experts_start_len": 0,
        "custom_logit_processor": None,
        "session_id": "s-1",
        "conversation_id": "c-1",
        "received_time": 1700000000.5,
        "return_text_in_logprobs": None,
        "stream": None,
        "return_logprob": None,
    }
    assert ok(server, **body)["output_ids"] == ok(server, text=PROMPT, sampling_params=GREEDY)["output_ids"]
