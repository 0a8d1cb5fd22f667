"""Embedding routes (sglkit/server/embeddings_api.py, tokenizer_manager.py) against real ``--is-embedding`` servers.

Vectors and scores are checked against HF transformers (tiny models) and sentence-transformers (the real
all-MiniLM-L6-v2); the seed's reward cell runs as written; refusals are 400s naming the field, after which the
server keeps serving; a generation model refuses every embedding route. A tiny BERT declaring Matryoshka
dimensions answers ``dimensions`` with HF's vector truncated and renormalized.
"""

from __future__ import annotations

import base64
import re

import numpy as np
import openai
import pytest
import requests
import torch

from sglkit.utils import terminate_process
from tests.embedding_reference import ATOL, TEXTS, hf_reference, minilm_path, tiny_embedding_model, tokenize  # noqa: F401
from tests.server.conftest import start_server

PREFILL_LINE = re.compile(
    r"Prefill batch\. #new-seq: (\d+), #new-token: (\d+), #cached-token: 0, cache hit rate: 0\.00%, "
    r"token usage: 0\.00, #running-req: 0, #queue-req: \d+"
)
ERROR_KEYS = {"message", "type", "param", "code"}


def post(server, route: str, status: int = 200, **body):
    resp = requests.post(f"{server.base_url}{route}", json=body, timeout=120)
    assert resp.status_code == status, resp.text
    return resp.json()


def assert_400(server, route: str, param: str, pattern: str, **body) -> None:
    error = post(server, route, 400, **body)["error"]
    assert set(error) == ERROR_KEYS and error["type"] == "invalid_request_error"
    assert error["param"] == param and re.search(pattern, error["message"]), error


def vectors(results) -> torch.Tensor:
    return torch.tensor([r["embedding"] for r in results])


@pytest.fixture(scope="module")
def bert_server(tiny_embedding_model):  # noqa: F811
    running = start_server(tiny_embedding_model("BertModel"), "--is-embedding")
    yield running
    terminate_process(running.process)


# ----------------------------------------------------------------------------- tiny BERT (sentence-transformers layout)
def test_model_info_and_flush(bert_server):
    info = requests.get(f"{bert_server.base_url}/get_model_info").json()
    assert info == {"model_path": bert_server.model_path, "is_generation": False}
    assert requests.post(f"{bert_server.base_url}/flush_cache").status_code == 200


def test_encode_single_and_list_match_hf(bert_server):
    path = bert_server.model_path
    expected = hf_reference(path, tokenize(path, TEXTS))
    one = post(bert_server, "/encode", model=path, text=TEXTS[0])
    assert set(one) == {"embedding", "meta_info"} and one["meta_info"]["prompt_tokens"] == len(
        tokenize(path, TEXTS[:1])[0]
    )
    torch.testing.assert_close(torch.tensor(one["embedding"]), expected[0], atol=ATOL, rtol=0)
    many = post(bert_server, "/encode", text=list(TEXTS))
    assert isinstance(many, list) and len(many) == len(TEXTS)
    torch.testing.assert_close(vectors(many), expected, atol=ATOL, rtol=0)
    by_ids = post(bert_server, "/encode", input_ids=tokenize(path, TEXTS))
    torch.testing.assert_close(vectors(by_ids), expected, atol=ATOL, rtol=0)
    # One request with a list is one prefill pass over all of it (the seed's log line).
    assert (str(len(TEXTS)), str(sum(map(len, tokenize(path, TEXTS))))) in PREFILL_LINE.findall(
        bert_server.log()
    )


def test_v1_embeddings_float_and_base64(bert_server):
    path = bert_server.model_path
    expected = hf_reference(path, tokenize(path, TEXTS))
    body = post(bert_server, "/v1/embeddings", model=path, input=list(TEXTS))
    assert body["object"] == "list" and body["model"] == path
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and {d["object"] for d in body["data"]} == {
        "embedding"
    }
    num_tokens = sum(map(len, tokenize(path, TEXTS)))
    assert body["usage"] == {"prompt_tokens": num_tokens, "total_tokens": num_tokens}
    torch.testing.assert_close(vectors(body["data"]), expected, atol=ATOL, rtol=0)
    packed = post(bert_server, "/v1/embeddings", input=TEXTS[1], encoding_format="base64")["data"]
    decoded = np.frombuffer(base64.b64decode(packed[0]["embedding"]), dtype="<f4")
    torch.testing.assert_close(torch.from_numpy(decoded.copy()), expected[1], atol=ATOL, rtol=0)
    for ids_input in (tokenize(path, TEXTS[:1])[0], tokenize(path, TEXTS[:2])):
        data = post(bert_server, "/v1/embeddings", input=ids_input)["data"]
        torch.testing.assert_close(vectors(data), expected[: len(data)], atol=ATOL, rtol=0)


def test_openai_client_embeddings_create(bert_server):
    path = bert_server.model_path
    expected = hf_reference(path, tokenize(path, TEXTS))
    with openai.OpenAI(base_url=f"{bert_server.base_url}/v1", api_key="None", max_retries=0) as client:
        result = client.embeddings.create(
            model=path, input=list(TEXTS)
        )  # the client asks for base64 by default
        torch.testing.assert_close(
            torch.tensor([d.embedding for d in result.data]), expected, atol=ATOL, rtol=0
        )
        assert result.usage.prompt_tokens == sum(map(len, tokenize(path, TEXTS)))
        floats = client.embeddings.create(model=path, input=TEXTS[0], encoding_format="float")
        torch.testing.assert_close(torch.tensor(floats.data[0].embedding), expected[0], atol=ATOL, rtol=0)
        with pytest.raises(openai.BadRequestError, match="does not exist"):
            client.embeddings.create(model="other-model", input="x")


@pytest.mark.parametrize(
    ("route", "body", "param", "pattern"),
    [
        ("/encode", {"text": ""}, "text", "The input text is empty"),
        ("/encode", {"text": []}, "text", "The batch of inputs is empty"),
        (
            "/encode",
            {"text": "word " * 400},
            "text",
            r"\((at least )?\d+ tokens\) is longer than the model's context length \(128",
        ),
        ("/encode", {"text": ["x"] * 2049}, "text", "The batch has 2049 inputs; at most 2048"),
        ("/encode", {"input_ids": [2, 10**6]}, "input_ids", "out of vocabulary"),
        ("/encode", {"text": "a", "input_ids": [2]}, "text", "not both"),
        ("/classify", {}, "text", "Either text or input_ids"),
        ("/v1/embeddings", {"input": ""}, "input", "^The input text is empty.$"),
        ("/v1/embeddings", {"input": []}, "input", "empty"),
        ("/v1/embeddings", {"input": [[]]}, "input", "non-empty list"),
        (
            "/v1/embeddings",
            {"input": ["ok", "word " * 400]},
            "input",
            r"input\[1\] \((at least )?\d+ tokens\) is longer",
        ),
        ("/v1/embeddings", {"input": ["x"] * 2049}, "input", "at most 2048"),
        ("/v1/embeddings", {"input": ["a", 3]}, "input", "input"),
        ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, "encoding_format", "float"),
        ("/v1/embeddings", {"input": "a", "dimensions": 7}, "dimensions", "64 dimensions.*Matryoshka"),
        ("/encode", {"text": "a", "dimensions": 7}, "dimensions", "64 dimensions"),
        ("/v1/embeddings", {"input": "a", "model": "nope"}, "model", "does not exist"),
        ("/generate", {"text": "a"}, "model", "embedding model"),
        ("/v1/completions", {"prompt": "a"}, "model", "embedding model"),
    ],
)
def test_refusals_are_400s_naming_the_field_and_the_server_keeps_serving(
    bert_server, route, body, param, pattern
):
    assert_400(bert_server, route, param, pattern, **body)
    assert len(post(bert_server, "/encode", text="still serving")["embedding"]) == 64


# ----------------------------------------------------------------------------- decoder embedders and classifiers
DECODERS = [
    "Qwen2Model",
    pytest.param("LlamaModel", marks=pytest.mark.slow),
    pytest.param("LlamaForCausalLM", marks=pytest.mark.slow),
    pytest.param("Qwen2ForCausalLM", marks=pytest.mark.slow),
    pytest.param("Qwen2ForSequenceClassification", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=DECODERS)
def decoder_server(request, tiny_embedding_model):  # noqa: F811
    running = start_server(tiny_embedding_model(request.param), "--is-embedding")
    yield running
    terminate_process(running.process)


def test_decoder_vectors_match_hf_single_and_batched(decoder_server):
    path = decoder_server.model_path
    expected = hf_reference(path, tokenize(path, TEXTS))
    torch.testing.assert_close(
        vectors(post(decoder_server, "/encode", text=list(TEXTS))), expected, atol=ATOL, rtol=0
    )
    one = post(decoder_server, "/classify", text=TEXTS[2])
    torch.testing.assert_close(torch.tensor(one["embedding"]), expected[2], atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def reward_server(tiny_embedding_model):  # noqa: F811
    running = start_server(tiny_embedding_model("LlamaForSequenceClassification"), "--is-embedding")
    yield running
    terminate_process(running.process)


def test_seed001_classify_reward_model(reward_server):
    """The seed's reward cell: two conversations through the chat template, one /classify call, one score each."""
    from transformers import AutoTokenizer

    prompt = "What is the range of the numeric output of a sigmoid node in a neural network?"
    response1 = "The output of a sigmoid node is bounded between -1 and 1."
    response2 = "The output of a sigmoid node is bounded between 0 and 1."
    convs = [
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response1}],
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response2}],
    ]
    tokenizer = AutoTokenizer.from_pretrained(reward_server.model_path)
    prompts = tokenizer.apply_chat_template(convs, tokenize=False)

    url = f"{reward_server.base_url}/classify"
    data = {"model": reward_server.model_path, "text": prompts}
    responses = requests.post(url, json=data).json()
    rewards = [response["embedding"][0] for response in responses]

    assert len(responses) == 2 and all(len(r["embedding"]) == 1 for r in responses)
    expected = hf_reference(reward_server.model_path, [tokenizer(p)["input_ids"] for p in prompts])[:, 0]
    torch.testing.assert_close(torch.tensor(rewards), expected, atol=ATOL, rtol=0)
    assert ("2", str(sum(r["meta_info"]["prompt_tokens"] for r in responses))) in PREFILL_LINE.findall(
        reward_server.log()
    )


# ----------------------------------------------------------------------------- the real all-MiniLM-L6-v2
@pytest.fixture(scope="module")
def minilm_server():
    running = start_server(minilm_path(), "--is-embedding")
    yield running
    terminate_process(running.process)


def test_minilm_v1_embeddings_equal_sentence_transformers(minilm_server):
    from sentence_transformers import SentenceTransformer

    sentences = [
        "A man is eating food.",
        "A man is riding a white horse on an enclosed ground.",
        "The new movie is awesome",
        "Embeddings map sentences to vectors.",
    ]
    expected = (
        SentenceTransformer(minilm_server.model_path, device="cpu")
        .encode(sentences, normalize_embeddings=True, convert_to_tensor=True)
        .float()
    )
    body = post(minilm_server, "/v1/embeddings", model=minilm_server.model_path, input=sentences)
    ours = vectors(body["data"])
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
    assert torch.nn.functional.cosine_similarity(ours, expected, dim=-1).min() > 0.9999
    with openai.OpenAI(base_url=f"{minilm_server.base_url}/v1", api_key="None", max_retries=0) as client:
        result = client.embeddings.create(model=minilm_server.model_path, input=sentences)
    torch.testing.assert_close(torch.tensor([d.embedding for d in result.data]), expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- a generation model refuses
@pytest.mark.parametrize("route", ["/encode", "/classify", "/v1/embeddings"])
def test_a_generation_model_refuses_embedding_routes(server, route):
    assert_400(server, route, "model", "generation model.*--is-embedding", text="hello", input="hello")


# ----------------------------------------------------------------------------- Matryoshka dimensions
@pytest.fixture(scope="module")
def matryoshka_server(tmp_path_factory):
    from sglkit.testing import make_tiny_embedding_model

    path = make_tiny_embedding_model(
        tmp_path_factory.mktemp("matryoshka") / "bert", "BertModel", matryoshka_dimensions=(16, 32, 64)
    )
    running = start_server(str(path), "--is-embedding")
    yield running
    terminate_process(running.process)


def test_matryoshka_dimensions_truncate_and_renormalize(matryoshka_server):
    path = matryoshka_server.model_path
    full = hf_reference(path, tokenize(path, TEXTS), normalize=False)
    for dimensions in (16, 32, 64):
        expected = torch.nn.functional.normalize(full[:, :dimensions], dim=-1)
        body = post(matryoshka_server, "/v1/embeddings", input=list(TEXTS), dimensions=dimensions)
        assert {len(d["embedding"]) for d in body["data"]} == {dimensions}
        torch.testing.assert_close(vectors(body["data"]), expected, atol=ATOL, rtol=0)
    packed = post(
        matryoshka_server, "/v1/embeddings", input=TEXTS[0], dimensions=16, encoding_format="base64"
    )
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    torch.testing.assert_close(
        torch.from_numpy(decoded.copy()),
        torch.nn.functional.normalize(full[0, :16], dim=-1),
        atol=ATOL,
        rtol=0,
    )
    native = post(matryoshka_server, "/encode", text=TEXTS[1], dimensions=32)
    torch.testing.assert_close(
        torch.tensor(native["embedding"]),
        torch.nn.functional.normalize(full[1, :32], dim=-1),
        atol=ATOL,
        rtol=0,
    )
    with openai.OpenAI(base_url=f"{matryoshka_server.base_url}/v1", api_key="None", max_retries=0) as client:
        result = client.embeddings.create(model=path, input=list(TEXTS), dimensions=16)
    torch.testing.assert_close(
        torch.tensor([d.embedding for d in result.data]),
        torch.nn.functional.normalize(full[:, :16], dim=-1),
        atol=ATOL,
        rtol=0,
    )


@pytest.mark.parametrize(
    ("route", "body", "param", "pattern"),
    [
        (
            "/v1/embeddings",
            {"input": "a", "dimensions": 24},
            "dimensions",
            r"Matryoshka dimensions are \[16, 32, 64\]",
        ),
        (
            "/v1/embeddings",
            {"input": "a", "dimensions": 65},
            "dimensions",
            "greater than max embedding dimension: 64",
        ),
        ("/v1/embeddings", {"input": "a", "dimensions": 0}, "dimensions", "greater than 0"),
        ("/v1/embeddings", {"input": "a", "dimensions": "16"}, "dimensions", ""),
        ("/encode", {"text": "a", "dimensions": 8}, "dimensions", "Matryoshka dimensions"),
        ("/v1/score", {"query": "a", "items": ["b"]}, "model", "no classification head"),
        ("/v1/rerank", {"query": "a", "documents": ["b"]}, "model", "cross-encoder"),
    ],
)
def test_matryoshka_refusals_and_routes_an_embedder_cannot_serve(
    matryoshka_server, route, body, param, pattern
):
    assert_400(matryoshka_server, route, param, pattern, **body)
    assert (
        len(post(matryoshka_server, "/v1/embeddings", input="ok", dimensions=16)["data"][0]["embedding"])
        == 16
    )
