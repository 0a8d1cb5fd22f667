"""--skip-tokenizer-init against a real server of its own, on a copy of the tiny model with its tokenizer files
removed (so neither the HTTP process nor the scheduler process can have loaded one): /generate takes input_ids
and answers output_ids (text empty, logprob entries without text), the same tokens as a normal engine; everything
that needs the tokenizer is a 400 naming the parameter.
"""

from __future__ import annotations

import json
import shutil

import pytest
import requests

import sglkit
from sglkit.utils import terminate_process
from tests.server.conftest import start_server

PROMPT_IDS = [[10, 11, 12, 13], [40, 41], [7, 300, 301, 302, 303]]
EOS_ID = 5  # the tiny model's config.json / generation_config.json eos_token_id
NO_TOKENIZER = "--skip-tokenizer-init"


def greedy(n: int, **extra) -> dict:
    return {"temperature": 0, "max_new_tokens": n, "ignore_eos": True, **extra}


@pytest.fixture(scope="module")
def token_only_model(server_model_path, tmp_path_factory) -> str:
    """The tiny model without tokenizer.json, tokenizer_config.json or chat template."""
    folder = tmp_path_factory.mktemp("token_only") / "model"
    shutil.copytree(server_model_path, folder)
    for pattern in ("tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "chat_template*"):
        for file in folder.glob(pattern):
            file.unlink()
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
    ]
    return str(folder)


@pytest.fixture(scope="module")
def token_server(token_only_model):
    running = start_server(token_only_model, NO_TOKENIZER, "--log-requests", "--max-total-tokens 4096")
    yield running
    terminate_process(running.process)


@pytest.fixture(scope="module")
def reference(server_model_path):
    """Greedy output ids of a normal engine (with its tokenizer) for ``PROMPT_IDS``."""
    with sglkit.Engine(model_path=server_model_path, max_total_tokens=2048) as llm:
        return [o["output_ids"] for o in llm.generate(input_ids=PROMPT_IDS, sampling_params=greedy(6))]


def post(server, body: dict, route: str = "/generate") -> requests.Response:
    return requests.post(server.base_url + route, json=body, timeout=60)


def assert_refused(response: requests.Response, param: str | None) -> str:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert NO_TOKENIZER in error["message"]
    return error["message"]


def test_generate_token_ids_in_and_out(token_server, reference):
    """Single and batch: output_ids equal a normal engine's, text is empty, meta_info as usual."""
    one = post(token_server, {"input_ids": PROMPT_IDS[0], "sampling_params": greedy(6)})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["output_ids"] == reference[0] and body["text"] == ""
    assert body["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
    assert body["meta_info"]["prompt_tokens"] == len(PROMPT_IDS[0])
    batch = post(token_server, {"input_ids": PROMPT_IDS, "sampling_params": greedy(6)}).json()
    assert [o["output_ids"] for o in batch] == reference
    assert all(o["text"] == "" for o in batch)
    seeded = {"temperature": 1.0, "max_new_tokens": 5, "ignore_eos": True, "sampling_seed": 3, "n": 2}
    first, second = post(token_server, {"input_ids": PROMPT_IDS[1], "sampling_params": seeded}).json()
    again = post(token_server, {"input_ids": PROMPT_IDS[1], "sampling_params": seeded}).json()
    assert [first["output_ids"], second["output_ids"]] == [o["output_ids"] for o in again]


def test_generate_stream(token_server, reference):
    """SSE chunks carry cumulative output_ids and empty text; the last one finishes; then [DONE]."""
    response = requests.post(
        token_server.base_url + "/generate",
        json={"input_ids": PROMPT_IDS[2], "sampling_params": greedy(6), "stream": True},
        stream=True,
        timeout=60,
    )
    assert response.status_code == 200
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    chunks = [json.loads(line[len(b"data: ") :]) for line in lines[:-1]]
    assert len(chunks) >= 2 and all(c["text"] == "" for c in chunks)
    ids = [c["output_ids"] for c in chunks]
    assert all(b[: len(a)] == a for a, b in zip(ids, ids[1:]))  # cumulative
    assert ids[-1] == reference[2]
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_logprobs_without_text(token_server, reference):
    """Logprob entries are [logprob, token_id, None]; the sampled ids match output_ids."""
    body = post(
        token_server,
        {
            "input_ids": PROMPT_IDS[0],
            "sampling_params": greedy(6),
            "return_logprob": True,
            "logprob_start_len": 0,
            "top_logprobs_num": 2,
        },
    ).json()
    meta = body["meta_info"]
    assert body["output_ids"] == reference[0]
    assert [e[1] for e in meta["output_token_logprobs"]] == body["output_ids"]
    assert all(e[2] is None and e[0] <= 0 for e in meta["output_token_logprobs"])
    assert [e[1] for e in meta["input_token_logprobs"]] == PROMPT_IDS[0]
    assert all(len(row) == 2 and row[0][2] is None for row in meta["output_top_logprobs"])


def test_eos_from_the_model_config_and_token_stops(token_server):
    """Without a tokenizer EOS still stops (ids from config.json); stop_token_ids and min_new_tokens work."""
    force_eos = {"temperature": 0, "max_new_tokens": 8, "logit_bias": {str(EOS_ID): 100.0}}
    out = post(token_server, {"input_ids": PROMPT_IDS[0], "sampling_params": force_eos}).json()
    assert out["output_ids"] == [EOS_ID]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS_ID}
    held = post(
        token_server, {"input_ids": PROMPT_IDS[0], "sampling_params": {**force_eos, "min_new_tokens": 3}}
    ).json()
    assert len(held["output_ids"]) == 4 and held["output_ids"][-1] == EOS_ID
    assert EOS_ID not in held["output_ids"][:3]
    ids = post(token_server, {"input_ids": PROMPT_IDS[1], "sampling_params": greedy(8)}).json()["output_ids"]
    stopped = post(
        token_server, {"input_ids": PROMPT_IDS[1], "sampling_params": greedy(8, stop_token_ids=[ids[2]])}
    ).json()
    assert stopped["output_ids"] == ids[: ids.index(ids[2]) + 1]
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": ids[2]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text": "Hello"}, "text"),
        ({"text": ["Hello", "there"]}, "text"),
        ({"input_ids": [10, 11], "sampling_params": {"stop": "x"}}, "stop"),
        ({"input_ids": [10, 11], "sampling_params": {"stop": ["x", "y"]}}, "stop"),
        ({"input_ids": [10, 11], "sampling_params": {"stop_regex": "a+"}}, "stop_regex"),
        ({"input_ids": [10, 11], "sampling_params": {"json_schema": '{"type": "object"}'}}, "json_schema"),
        ({"input_ids": [10, 11], "sampling_params": {"regex": "[0-9]+"}}, "regex"),
        ({"input_ids": [10, 11], "sampling_params": {"ebnf": 'root ::= "a"'}}, "ebnf"),
        (
            {"input_ids": [10, 11], "return_logprob": True, "return_text_in_logprobs": True},
            "return_text_in_logprobs",
        ),
        ({"input_ids": [10, 11], "stream": True, "sampling_params": {"stop": "x"}}, "stop"),
    ],
)
def test_generate_refuses_what_needs_a_tokenizer(token_server, body, param):
    message = assert_refused(post(token_server, body), param)
    if param == "text":
        assert "requires input_ids" in message


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": "Hi"}]}, "messages"),
        ("/v1/completions", {"model": "x", "prompt": "Hello"}, "prompt"),
        ("/v1/completions", {"model": "x", "prompt": [10, 11, 12]}, "prompt"),
        ("/tokenize", {"prompt": "Hello"}, "prompt"),
        ("/v1/tokenize", {"messages": [{"role": "user", "content": "Hi"}]}, "messages"),
        ("/detokenize", {"tokens": [10, 11]}, "tokens"),
    ],
)
def test_text_routes_are_refused(token_server, route, body, param):
    body = {**body, "model": token_server.model_path} if "model" in body else body
    assert_refused(post(token_server, body, route), param)


def test_tokenizer_info_is_refused(token_server):
    assert_refused(requests.get(token_server.base_url + "/tokenizer_info", timeout=30), None)


def test_info_routes_and_health_still_answer(token_server):
    """/get_model_info, /get_server_args, /health_generate work; the server keeps serving after refusals."""
    info = requests.get(token_server.base_url + "/get_model_info", timeout=30).json()
    assert info == {"model_path": token_server.model_path, "is_generation": True}
    args = requests.get(token_server.base_url + "/get_server_args", timeout=30).json()
    assert args["skip_tokenizer_init"] is True
    assert requests.get(token_server.base_url + "/health_generate", timeout=30).status_code == 200
    assert post(token_server, {"input_ids": [10], "sampling_params": greedy(2)}).status_code == 200
    log = token_server.log()
    assert "<4 token ids>" in log  # --log-requests shows the input as token ids
    assert "Traceback" not in log
