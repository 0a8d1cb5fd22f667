"""The seed notebooks' generation-side cells, run against a real sglkit server (shared ``server`` fixture).

Seed 000 ("Quick Start: Sending Requests"): curl and ``requests`` chat completions, the openai client (plain and
streaming), native /generate (plain and streaming). Seed 001 ("Native APIs"): /generate, /get_server_args,
/get_model_info, /health_generate, /health, /flush_cache, /get_memory_pool_size. The seed's /update_weights cells
run in test_native_api.py on a server of their own (they change the weights).

Each test is one cell with the seed's code, the model name replaced by the launched path, plus asserts on the
response shapes the seed prints. The tiny random model rarely emits EOS, so finish reasons are usually "length".
"""

from __future__ import annotations

import json
import shlex
import subprocess

import openai
import pytest
import requests

pytestmark = pytest.mark.usefixtures("server")

CHAT_KEYS = {"id", "object", "created", "model", "choices", "usage"}
CHAT_CHOICE_KEYS = {"index", "message", "logprobs", "finish_reason", "matched_stop"}
USAGE_KEYS = {"prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details"}
META_KEYS = {"id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens"}  # (+ e2e_latency)


def _check_chat_completion(response: dict, model: str, context_len: int) -> None:
    """A seed chat answer: its keys, one assistant choice, consistent usage."""
    assert response.keys() == CHAT_KEYS
    assert response["object"] == "chat.completion"
    assert response["model"] == model
    assert isinstance(response["id"], str) and response["id"]
    assert isinstance(response["created"], int)
    [choice] = response["choices"]
    assert choice.keys() == CHAT_CHOICE_KEYS
    assert choice["index"] == 0
    assert choice["message"].keys() == {"role", "content", "tool_calls"}
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["message"]["tool_calls"] is None
    assert choice["finish_reason"] in ("stop", "length")
    usage = response["usage"]
    assert usage.keys() == USAGE_KEYS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        # No max_tokens in these cells: SGLang's default is all the room left in the context.
        assert usage["total_tokens"] == context_len


# ----------------------------------------------------------------------------- seed 000
def test_seed000_curl_and_requests_chat_completions(server):
    """Cells [2] and [3]: the same chat request through curl (form-encoded ``-d``) and ``requests``.

    Neither sets max_tokens, so a random model writes until the context is full; both run at once.
    """
    base = server.base_url
    body = {
        "model": server.model_path,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    curl_command = f"curl -s {base}/v1/chat/completions -d {shlex.quote(json.dumps(body))}"
    curl = subprocess.Popen(curl_command, shell=True, stdout=subprocess.PIPE)
    try:
        response = requests.post(f"{base}/v1/chat/completions", json=body)
        curl_out, _ = curl.communicate(timeout=300)
    finally:
        curl.kill()
        curl.wait()
    context_len = requests.get(f"{base}/v1/models").json()["data"][0]["max_model_len"]
    assert response.status_code == 200, response.text
    from_curl = json.loads(curl_out)
    _check_chat_completion(response.json(), server.model_path, context_len)
    _check_chat_completion(from_curl, server.model_path, context_len)
    assert from_curl["id"] != response.json()["id"]


def test_seed000_openai_client_chat_and_stream(server):
    """Cells [4] and [5]: the openai client, plain then streaming; greedy, so the streamed text is the same."""
    client = openai.Client(base_url=f"{server.base_url}/v1", api_key="None")
    messages = [{"role": "user", "content": "List 3 countries and their capitals."}]
    response = client.chat.completions.create(
        model=server.model_path, messages=messages, temperature=0, max_tokens=64
    )
    assert response.object == "chat.completion"
    assert response.model == server.model_path
    [choice] = response.choices
    assert choice.index == 0 and choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert response.usage.completion_tokens <= 64
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    if choice.finish_reason == "length":
        assert response.usage.completion_tokens == 64

    stream = client.chat.completions.create(
        model=server.model_path, messages=messages, temperature=0, max_tokens=64, stream=True
    )
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == choice.message.content
    assert finish == choice.finish_reason


def test_seed000_native_generate(server):
    """Cell [6]: ``text`` + ``sampling_params``; ``meta_info`` with SGLang's keys, length finish at 32."""
    response = requests.post(
        f"{server.base_url}/generate",
        json={
            "text": "The capital of France is",
            "sampling_params": {"temperature": 0, "max_new_tokens": 32},
        },
    )
    assert response.status_code == 200
    out = response.json()
    assert out.keys() == {"text", "output_ids", "meta_info"}
    assert META_KEYS <= out["meta_info"].keys()
    assert len(out["output_ids"]) == 32
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 32}
    assert meta["completion_tokens"] == 32
    assert meta["prompt_tokens"] > 0 and 0 <= meta["cached_tokens"] < meta["prompt_tokens"]
    assert isinstance(meta["id"], str) and meta["id"]


def test_seed000_native_generate_stream(server):
    """Cell [7]: ``data:`` lines of cumulative text, ``data: [DONE]`` last; printed pieces == the plain answer."""
    payload = {
        "text": "The capital of France is",
        "sampling_params": {"temperature": 0, "max_new_tokens": 32},
    }
    expected = requests.post(f"{server.base_url}/generate", json=payload).json()
    response = requests.post(f"{server.base_url}/generate", json={**payload, "stream": True}, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line.decode("utf-8") for line in response.iter_lines(decode_unicode=False) if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    prev, printed, last = 0, [], None
    for chunk in lines[:-1]:
        data = json.loads(chunk[5:].strip("\n"))
        assert data.keys() == {"text", "output_ids", "meta_info"}
        output = data["text"]
        if last is not None:
            assert output.startswith(last["text"])  # cumulative
            assert data["output_ids"][: len(last["output_ids"])] == last["output_ids"]
        printed.append(output[prev:])
        prev = len(output)
        last = data
    assert "".join(printed) == expected["text"]
    assert last["output_ids"] == expected["output_ids"]
    assert last["meta_info"]["finish_reason"] == {"type": "length", "length": 32}
    assert last["meta_info"]["completion_tokens"] == 32


# ----------------------------------------------------------------------------- seed 001
def test_seed001_generate_default_params(server):
    """Cell [2]: only ``text``; SGLang's default max_new_tokens is 128."""
    response = requests.post(f"{server.base_url}/generate", json={"text": "What is the capital of France?"})
    assert response.status_code == 200
    out = response.json()
    assert out.keys() == {"text", "output_ids", "meta_info"}
    assert META_KEYS <= out["meta_info"].keys()
    assert 1 <= out["meta_info"]["completion_tokens"] <= 128
    assert out["meta_info"]["completion_tokens"] == len(out["output_ids"])


def test_seed001_get_server_args(server):
    """Cell [3]."""
    response = requests.get(f"{server.base_url}/get_server_args")
    assert response.status_code == 200
    args = response.json()
    assert args["model_path"] == server.model_path
    assert args["enable_metrics"] is True
    assert args["max_total_tokens"] == 16384
    assert {"tokenizer_path", "served_model_name", "host", "port", "random_seed", "api_key"} <= args.keys()


def test_seed001_get_model_info(server):
    """Cell [4], with the seed's own asserts."""
    response = requests.get(f"{server.base_url}/get_model_info")
    response_json = response.json()
    assert response_json["model_path"] == server.model_path
    assert response_json["is_generation"] is True
    assert response_json.keys() == {"model_path", "is_generation"}


def test_seed001_health(server):
    """Cells [5] and [6]."""
    assert requests.get(f"{server.base_url}/health_generate").status_code == 200
    assert requests.get(f"{server.base_url}/health").status_code == 200


def test_seed001_flush_cache(server):
    """Cell [7]: POST, 200 with SGLang's text."""
    response = requests.post(f"{server.base_url}/flush_cache")
    assert response.status_code == 200
    assert response.text.startswith("Cache flushed.")


def test_seed001_get_memory_pool_size(server):
    """Cell [8]: a bare integer (tokens)."""
    response = requests.get(f"{server.base_url}/get_memory_pool_size")
    assert response.status_code == 200
    size = response.json()
    assert isinstance(size, int) and not isinstance(size, bool)
    assert size == 16384
    assert response.text == "16384"
