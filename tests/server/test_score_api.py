"""/v1/score and /v1/rerank (sglkit/server/score_api.py, rerank_api.py) over real servers, checked against HF.

Generation model (the shared tiny Llama): label-token probabilities at the position after query + item equal HF's
next-token distribution; reranking equals P(yes) / (P(yes) + P(no)) from HF on the documented prompt.
Cross-encoder (a tiny LlamaForSequenceClassification, one label, --is-embedding): the head's outputs on the
tokenizer's pair encoding. Refusals are 400s naming the field, and the server keeps serving.
"""

from __future__ import annotations

import math
import re

import pytest
import requests
import torch

from sglkit.server.rerank_api import DEFAULT_INSTRUCT, rerank_prompt
from sglkit.utils import terminate_process
from tests.embedding_reference import hf_reference, tiny_embedding_model  # noqa: F401
from tests.server.conftest import start_server

ERROR_KEYS = {"message", "type", "param", "code"}
QUERY = "The capital of France is"
ITEMS = [" Paris", " London and more words"]
LABELS = [5, 17, 300]
ATOL = 1e-4


def post(server, route: str, status: int = 200, **body):
    resp = requests.post(f"{server.base_url}{route}", json=body, timeout=120)
    assert resp.status_code == status, resp.text
    return resp.json()


def assert_400(server, route: str, param: str, pattern: str, **body) -> None:
    error = post(server, route, 400, **body)["error"]
    assert set(error) == ERROR_KEYS and error["type"] == "invalid_request_error"
    assert error["param"] == param and re.search(pattern, error["message"]), error


@pytest.fixture(scope="module")
def hf(server_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(server_model_path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(server_model_path)


@torch.no_grad()
def next_logprobs(model, ids: list[int]) -> torch.Tensor:
    """HF's log-softmax over the vocabulary at the position after ``ids``."""
    return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)


@torch.no_grad()
def continuation_logprob(model, prompt: list[int], tail: list[int]) -> float:
    """HF's log P(tail | prompt), summed over tail's tokens."""
    logprobs = torch.log_softmax(model(torch.tensor([prompt + tail])).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(tail))


# ----------------------------------------------------------------------------- /v1/score, generation model
def test_score_text_items_equal_hf_next_token_probabilities(server, hf):
    model, tokenizer = hf
    body = post(
        server, "/v1/score", query=QUERY, items=ITEMS, label_token_ids=LABELS, model=server.model_path
    )
    assert set(body) == {"scores", "pooled_hidden_states", "token_logprobs", "model", "usage", "object"}
    assert body["object"] == "scoring" and body["model"] == server.model_path
    token_lists = [tokenizer(QUERY + item)["input_ids"] for item in ITEMS]
    expected = torch.stack([next_logprobs(model, ids)[LABELS].exp() for ids in token_lists])
    torch.testing.assert_close(torch.tensor(body["scores"]), expected, atol=ATOL, rtol=0)
    num_tokens = sum(map(len, token_lists))
    assert body["usage"]["prompt_tokens"] == num_tokens == body["usage"]["total_tokens"]
    assert body["usage"]["completion_tokens"] == 0


def test_score_token_ids_item_first_softmax_temperature_and_token_logprobs(server, hf):
    model, _ = hf
    query, items = [1, 40, 41], [[50, 51], [60]]
    body = post(
        server,
        "/v1/score",
        query=query,
        items=items,
        label_token_ids=[[5, 6], [7, 8]],
        apply_softmax=True,
        temperature=0.5,
        item_first=True,
        return_token_logprobs=True,
    )
    for row, logprobs, item, labels in zip(body["scores"], body["token_logprobs"], items, [[5, 6], [7, 8]]):
        expected = next_logprobs(model, item + query)[labels]
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            torch.tensor(row), torch.softmax(expected / 0.5, dim=-1), atol=ATOL, rtol=0
        )
    single = post(server, "/v1/score", query=QUERY, items=ITEMS[0], label_token_ids=LABELS)
    assert len(single["scores"]) == 1 and single["token_logprobs"] is None


@pytest.mark.parametrize(
    ("body", "param", "pattern"),
    [
        ({"query": "a", "label_token_ids": [1]}, "items", "items must be provided"),
        ({"query": "a", "items": [], "label_token_ids": [1]}, "items", "must not be empty"),
        ({"query": "a", "items": ["b"] * 2049, "label_token_ids": [1]}, "items", "at most 2048"),
        ({"query": "a", "items": ["b"]}, "label_token_ids", "required"),
        (
            {"query": "a", "items": ["b"], "label_token_ids": [1, 512]},
            "label_token_ids",
            r"512 is out of vocab",
        ),
        ({"query": "a", "items": ["b"], "label_token_ids": [-1]}, "label_token_ids", "out of vocab"),
        ({"query": "a", "items": ["b"], "label_token_ids": [3, 3]}, "label_token_ids", "duplicate"),
        ({"query": "a", "items": ["b", "c"], "label_token_ids": [[1]]}, "label_token_ids", "1 lists for 2"),
        ({"query": "a", "items": [[5]], "label_token_ids": [1]}, "query", "token ids"),
        ({"query": [5], "items": ["b"], "label_token_ids": [1]}, "query", "text"),
        ({"query": [1], "items": [[5], []], "label_token_ids": [1]}, "items", r"items\[1\]"),
        (
            {"query": [5], "items": [[10**6]], "label_token_ids": [1]},
            "items",
            r"10{6} in items is out of vocab",
        ),
        (
            {"query": [-1], "items": [[5]], "label_token_ids": [1]},
            "query",
            "-1 in query is out of vocabulary",
        ),
        ({"query": "", "items": [""], "label_token_ids": [1]}, "items", "empty"),
        ({"query": "word " * 3000, "items": ["b"], "label_token_ids": [1]}, "items", "context length"),
        ({"items": ["b"], "label_token_ids": [1], "temperature": 0}, "temperature", "greater than zero"),
        ({"items": ["b"], "label_token_ids": [1], "temperature": 2.0}, "temperature", "apply_softmax"),
        ({"items": ["b"], "label_token_ids": [1], "apply_softmax": "yes"}, "apply_softmax", ""),
        (
            {"items": ["b"], "label_token_ids": [1], "score_extraction_token": "<s>"},
            "score_extraction_token",
            "",
        ),
        (
            {"items": ["b"], "label_token_ids": [1], "return_pooled_hidden_states": False, "nope": 1},
            "nope",
            "Unre",
        ),
        ({"items": ["b"], "label_token_ids": [1], "model": "other"}, "model", "does not exist"),
    ],
)
def test_score_refusals_are_400s_naming_the_field(server, body, param, pattern):
    assert_400(server, "/v1/score", param, pattern, **body)
    assert post(server, "/v1/score", items="x", label_token_ids=[1])["scores"][0][0] > 0


# ----------------------------------------------------------------------------- /v1/rerank, generation model
def test_rerank_generation_model_equals_hf_yes_no_probability(server, hf):
    model, tokenizer = hf
    query = "What is the capital of France?"
    documents = ["Paris is the capital of France.", "Bananas are yellow.", "The sky is blue today."]
    results = post(server, "/v1/rerank", query=query, documents=documents, model=server.model_path)
    assert [set(r) for r in results] == [{"score", "document", "index", "meta_info"}] * 3
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and sorted(r["index"] for r in results) == [0, 1, 2]
    yes, no = (tokenizer.encode(w, add_special_tokens=False) for w in ("yes", "no"))
    for r in results:
        assert r["document"] == documents[r["index"]] and r["meta_info"] is None
        prompt = tokenizer.encode(rerank_prompt(tokenizer, query, documents[r["index"]], None))
        diff = continuation_logprob(model, prompt, no) - continuation_logprob(model, prompt, yes)
        assert math.isclose(r["score"], 1 / (1 + math.exp(diff)), rel_tol=1e-3, abs_tol=1e-7)
    assert f"<Instruct>: {DEFAULT_INSTRUCT}\n<Query>: {query}\n" in rerank_prompt(tokenizer, query, "d", None)
    top = post(server, "/v1/rerank", query=query, documents=documents, top_n=2, return_documents=False)
    assert [(r["index"], r["score"]) for r in top] == [(r["index"], r["score"]) for r in results[:2]]
    assert all("document" not in r for r in top)
    resp = requests.put(f"{server.base_url}/v1/rerank", json={"query": query, "documents": documents[:1]})
    assert resp.status_code == 200 and resp.json()[0]["index"] == 0


@pytest.mark.parametrize(
    ("body", "param", "pattern"),
    [
        ({"query": " ", "documents": ["a"]}, "query", "empty"),
        ({"query": "q", "documents": []}, "documents", "empty"),
        ({"query": "q", "documents": ["a", ""]}, "documents", r"documents\[1\]"),
        ({"query": "q", "documents": ["a"] * 2049}, "documents", "at most 2048"),
        ({"query": "q", "documents": ["a"], "top_n": 0}, "top_n", "at least 1"),
        (
            {"query": "q", "documents": [[{"type": "text", "text": "a"}]]},
            "documents",
            r"documents\[0\].*text only",
        ),
        ({"query": [{"type": "text", "text": "a"}], "documents": ["a"]}, "query", "text only"),
        ({"documents": ["a"]}, "query", ""),
        ({"query": "q", "documents": ["a"], "rank_fields": ["x"]}, "rank_fields", "Unrecognized"),
        ({"query": "q", "documents": ["word " * 3000]}, "documents", "context length"),
    ],
)
def test_rerank_refusals_are_400s_naming_the_field(server, body, param, pattern):
    assert_400(server, "/v1/rerank", param, pattern, **body)


# ----------------------------------------------------------------------------- a cross-encoder (--is-embedding)
@pytest.fixture(scope="module")
def cross_encoder(tiny_embedding_model):  # noqa: F811
    running = start_server(tiny_embedding_model("LlamaForSequenceClassification"), "--is-embedding")
    yield running
    terminate_process(running.process)


def test_cross_encoder_rerank_and_score_equal_hf_head(cross_encoder):
    from transformers import AutoTokenizer

    path = cross_encoder.model_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    query, documents = "capital of France", ["Paris is the capital.", "Bananas are yellow.", "Blue sky"]
    results = post(cross_encoder, "/v1/rerank", query=query, documents=documents)
    expected = hf_reference(path, tokenizer([[query, d] for d in documents])["input_ids"])[:, 0]
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for r in results:
        assert math.isclose(r["score"], float(expected[r["index"]]), abs_tol=ATOL)
        assert r["meta_info"]["prompt_tokens"] == len(tokenizer(query, documents[r["index"]])["input_ids"])
    body = post(cross_encoder, "/v1/score", query=query, items=[" " + d for d in documents])
    head = hf_reference(path, [tokenizer(query + " " + d)["input_ids"] for d in documents])
    torch.testing.assert_close(torch.tensor(body["scores"]), head, atol=ATOL, rtol=0)
    soft = post(cross_encoder, "/v1/score", query=query, items=documents, apply_softmax=True)
    assert soft["scores"] == [[1.0]] * 3  # one label
    assert_400(
        cross_encoder,
        "/v1/score",
        "return_token_logprobs",
        "generation",
        items="a",
        return_token_logprobs=True,
    )
