"""Tokenizer routes (sglkit/server/tokenize_api.py): the pure functions on a tiny tokenizer, then the routes of the
shared real server (/tokenize, /v1/tokenize, /detokenize, /v1/detokenize, /tokenizer_info), checked against the
HF tokenizer of the same checkpoint loaded here.
"""

from __future__ import annotations

import pytest
import requests
from transformers import AutoTokenizer

from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.tokenize_api import (
    DetokenizeRequest,
    TokenizeRequest,
    detokenize,
    tokenize,
    tokenizer_info,
)

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def hf_tokenizer(server_model_path):
    """The HF tokenizer of the shared server's checkpoint."""
    return AutoTokenizer.from_pretrained(server_model_path)


# ----------------------------------------------------------------------------- pure functions
def test_tokenize_prompt_adds_special_tokens_by_default(hf_tokenizer) -> None:
    out = tokenize(hf_tokenizer, TokenizeRequest(prompt="hello world"), 2048)
    assert out.tokens == hf_tokenizer.encode("hello world")
    assert out.tokens[0] == hf_tokenizer.bos_token_id
    assert out.count == len(out.tokens) and out.max_model_len == 2048 and out.token_strs is None
    plain = tokenize(hf_tokenizer, TokenizeRequest(prompt="hello world", add_special_tokens=False), 2048)
    assert plain.tokens == out.tokens[1:]


def test_tokenize_batch_and_token_strs(hf_tokenizer) -> None:
    out = tokenize(hf_tokenizer, TokenizeRequest(prompt=["a b", "hello"], return_token_strs=True), 64)
    assert out.tokens == [hf_tokenizer.encode("a b"), hf_tokenizer.encode("hello")]
    assert out.count == [len(t) for t in out.tokens]
    assert out.token_strs == [hf_tokenizer.convert_ids_to_tokens(t) for t in out.tokens]


def test_tokenize_messages_matches_the_chat_template(hf_tokenizer) -> None:
    out = tokenize(hf_tokenizer, TokenizeRequest(messages=MESSAGES), 64)
    expected = hf_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert out.tokens == list(expected)
    no_prompt = tokenize(hf_tokenizer, TokenizeRequest(messages=MESSAGES, add_generation_prompt=False), 64)
    assert out.tokens[: len(no_prompt.tokens)] == no_prompt.tokens and len(no_prompt.tokens) < len(out.tokens)


def test_tokenize_continue_final_message_leaves_the_turn_open(hf_tokenizer) -> None:
    messages = [*MESSAGES, {"role": "assistant", "content": "The capital"}]
    out = tokenize(hf_tokenizer, TokenizeRequest(messages=messages, continue_final_message=True), 64)
    assert hf_tokenizer.decode(out.tokens).endswith("The capital")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": "x", "messages": MESSAGES}, "messages"),
        ({"prompt": "x", "add_generation_prompt": True}, "add_generation_prompt"),
        ({"prompt": "x", "tools": []}, "tools"),
        ({"messages": MESSAGES, "continue_final_message": True}, "continue_final_message"),
        (
            {
                "messages": [*MESSAGES, {"role": "assistant", "content": "x"}],
                "continue_final_message": True,
                "add_generation_prompt": True,
            },
            "continue_final_message",
        ),
    ],
)
def test_tokenize_refuses_bad_combinations(hf_tokenizer, body, param) -> None:
    with pytest.raises(InvalidRequestError) as err:
        tokenize(hf_tokenizer, TokenizeRequest(**body), 64)
    assert err.value.param == param


def test_detokenize_single_batch_and_special_tokens(hf_tokenizer) -> None:
    ids = hf_tokenizer.encode("hello world")
    out = detokenize(hf_tokenizer, DetokenizeRequest(tokens=ids), len(hf_tokenizer))
    assert out.text == out.prompt == "hello world"
    raw = detokenize(
        hf_tokenizer, DetokenizeRequest(tokens=ids, skip_special_tokens=False), len(hf_tokenizer)
    )
    assert raw.text == hf_tokenizer.bos_token + "hello world"
    batch = detokenize(hf_tokenizer, DetokenizeRequest(tokens=[ids, ids[1:2]]), len(hf_tokenizer))
    assert batch.text == ["hello world", hf_tokenizer.decode(ids[1:2])]
    assert detokenize(hf_tokenizer, DetokenizeRequest(tokens=[]), 10).text == ""


def test_detokenize_refuses_out_of_vocabulary_ids(hf_tokenizer) -> None:
    with pytest.raises(InvalidRequestError, match=r"tokens\[1\]\[0\]") as err:
        detokenize(hf_tokenizer, DetokenizeRequest(tokens=[[1], [512]]), 512)
    assert err.value.param == "tokens"
    with pytest.raises(InvalidRequestError, match=r"Token id -1 in tokens\[0\]"):
        detokenize(hf_tokenizer, DetokenizeRequest(tokens=[-1]), 512)


def test_tokenizer_info_names_special_tokens_and_template(hf_tokenizer) -> None:
    info = tokenizer_info(hf_tokenizer, 512, 2048)
    assert info["eos_token"] == hf_tokenizer.eos_token and info["eos_token_id"] == hf_tokenizer.eos_token_id
    assert info["bos_token"] == "<s>" and info["bos_token_id"] == hf_tokenizer.bos_token_id
    assert info["pad_token"] == hf_tokenizer.pad_token
    assert info["chat_template"] == hf_tokenizer.chat_template
    assert info["vocab_size"] == 512 and info["max_model_len"] == 2048


# ----------------------------------------------------------------------------- routes of a real server
@pytest.mark.parametrize("path", ["/tokenize", "/v1/tokenize"])
def test_tokenize_route(server, hf_tokenizer, path) -> None:
    response = requests.post(server.base_url + path, json={"prompt": "hello world"})
    assert response.status_code == 200, response.text
    context_len = requests.get(server.base_url + "/v1/models").json()["data"][0]["max_model_len"]
    ids = hf_tokenizer.encode("hello world")
    assert response.json() == {"tokens": ids, "count": len(ids), "max_model_len": context_len}


def test_tokenize_route_messages_and_model_name(server, hf_tokenizer) -> None:
    served = requests.get(server.base_url + "/v1/models").json()["data"][0]["id"]
    body = {"model": served, "messages": MESSAGES, "return_token_strs": True}
    out = requests.post(server.base_url + "/v1/tokenize", json=body).json()
    assert out["tokens"] == tokenize(hf_tokenizer, TokenizeRequest(messages=MESSAGES), 1).tokens
    assert out["token_strs"] == hf_tokenizer.convert_ids_to_tokens(out["tokens"])
    # The chat route's prompt is exactly these tokens.
    chat = requests.post(
        server.base_url + "/v1/chat/completions",
        json={"messages": MESSAGES, "max_tokens": 1, "temperature": 0},
    ).json()
    assert chat["usage"]["prompt_tokens"] == out["count"]


@pytest.mark.parametrize("path", ["/detokenize", "/v1/detokenize"])
def test_detokenize_route_round_trips(server, path) -> None:
    ids = requests.post(server.base_url + "/tokenize", json={"prompt": ["hello world", "Paris"]}).json()[
        "tokens"
    ]
    out = requests.post(server.base_url + path, json={"tokens": ids})
    assert out.status_code == 200, out.text
    assert out.json() == {"text": ["hello world", "Paris"], "prompt": ["hello world", "Paris"]}


def test_tokenizer_info_route(server, hf_tokenizer) -> None:
    info = requests.get(server.base_url + "/tokenizer_info").json()
    assert info["eos_token"] == hf_tokenizer.eos_token and info["chat_template"] == hf_tokenizer.chat_template
    assert requests.get(server.base_url + "/v1/tokenizer_info").json() == info


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {"prompt": "x", "bogus": 1}, "bogus"),
        ("/tokenize", {"prompt": 3}, "prompt"),
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": "x", "add_special_tokens": "yes"}, "add_special_tokens"),
        ("/tokenize", {"prompt": "x", "model": "no-such-model"}, "model"),
        ("/tokenize", {"messages": []}, "messages"),
        ("/detokenize", {"tokens": [1, 100000]}, "tokens"),
        ("/detokenize", {"tokens": ["a"]}, "tokens"),
        ("/detokenize", {}, "tokens"),
        ("/v1/detokenize", {"tokens": [1], "skip_special_tokens": 1}, "skip_special_tokens"),
    ],
)
def test_bad_inputs_are_400_naming_the_field(server, path, body, param) -> None:
    response = requests.post(server.base_url + path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert requests.post(server.base_url + "/tokenize", json={"prompt": "ok"}).status_code == 200
