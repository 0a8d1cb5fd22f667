"""SGLang's native HTTP API (sglkit/server/native_api.py) against real server subprocesses.

Generation, info and cache routes use the shared ``server``; /update_weights runs on a server of its own (module
scope) so changed weights never leak into other tests. Greedy outputs are checked against ``sglkit.Engine`` on
the same checkpoint in this process (same kernels, so ids are identical).
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from pathlib import Path

import psutil
import pytest
import requests
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

import sglkit
from sglkit.utils import terminate_process
from tests.server.conftest import start_server

PROMPT = "The capital of France is"
GREEDY = {"temperature": 0, "max_new_tokens": 16}
ERROR_KEYS = {"message", "type", "param", "code"}
FLUSH_BUSY = re.compile(
    r"^Cache not flushed because there are pending requests\. #queue-req: \d+, #running-req: \d+$"
)
SIZE_MISMATCH = re.compile(
    r"^Failed to update weights: The size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) "
    r"at non-singleton dimension 1\.\nRolling back to original weights\.$"
)


def engine_greedy_ids(model_path: str, prompt: str = PROMPT, max_new_tokens: int = 16) -> list[int]:
    """Greedy output ids of ``prompt`` from an in-process Engine on ``model_path``."""
    engine = sglkit.Engine(model_path=model_path, max_total_tokens=1024)
    try:
        return engine.generate(prompt, {"temperature": 0, "max_new_tokens": max_new_tokens})["output_ids"]
    finally:
        engine.shutdown()


def generate(base_url: str, **body) -> dict:
    """POST /generate and return the JSON answer (asserting 200)."""
    response = requests.post(f"{base_url}/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def greedy_ids(base_url: str) -> list[int]:
    """The server's greedy output ids for PROMPT."""
    return generate(base_url, text=PROMPT, sampling_params=GREEDY)["output_ids"]


def server_info(base_url: str) -> dict:
    """GET /get_server_info (asserting 200)."""
    response = requests.get(f"{base_url}/get_server_info")
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: requests.Response, status: int, param: str | None = None) -> dict:
    """An OpenAI-style error answer with ``status`` (and ``param`` if given); returns its ``error`` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body.keys() == {"error"}
    assert body["error"].keys() == ERROR_KEYS
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def stop_server_and_check(process) -> None:
    """terminate_process, then assert the whole process tree (HTTP + scheduler) is gone."""
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    terminate_process(process)
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"


# ----------------------------------------------------------------------------- /generate
def test_generate_matches_engine_greedy(server):
    """Text and input_ids inputs give the Engine's greedy ids; ``text`` is their decoding."""
    expected = engine_greedy_ids(server.model_path)
    out = generate(server.base_url, text=PROMPT, sampling_params=GREEDY)
    assert out["output_ids"] == expected
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 16}
    tok = AutoTokenizer.from_pretrained(server.model_path)
    assert out["text"] == tok.decode(expected, skip_special_tokens=True)
    prompt_ids = tok.encode(PROMPT)
    by_ids = generate(server.base_url, input_ids=prompt_ids, sampling_params=GREEDY)
    assert by_ids["output_ids"] == expected
    assert by_ids["meta_info"]["prompt_tokens"] == len(prompt_ids) == out["meta_info"]["prompt_tokens"]


def test_generate_reports_cached_prompt_tokens(server):
    """A repeated prompt hits the radix cache: cached_tokens = all but the last prompt token."""
    prompt = "Cache me if you can, said the little radix tree."
    first = generate(server.base_url, text=prompt, sampling_params={"max_new_tokens": 2})
    second = generate(server.base_url, text=prompt, sampling_params={"max_new_tokens": 2})
    assert first["meta_info"]["cached_tokens"] < first["meta_info"]["prompt_tokens"] - 1
    assert second["meta_info"]["cached_tokens"] == second["meta_info"]["prompt_tokens"] - 1


def test_generate_batch_and_rid(server):
    """A list of texts answers a list in order; a given rid becomes meta_info.id."""
    outs = generate(
        server.base_url,
        text=[PROMPT, "Once upon a time"],
        rid=["rid-a", "rid-b"],
        sampling_params={"temperature": 0, "max_new_tokens": 4},
    )
    assert isinstance(outs, list) and len(outs) == 2
    assert [o["meta_info"]["id"] for o in outs] == ["rid-a", "rid-b"]
    assert outs[0]["output_ids"] == greedy_ids(server.base_url)[:4]


@pytest.mark.parametrize(
    "body",
    [
        {"text": [PROMPT, PROMPT], "rid": ["dup", "dup"]},
        {"text": [PROMPT, PROMPT], "rid": ["z", "z-0"], "sampling_params": [{"n": 2}, {}]},
    ],
    ids=["same-rid-twice", "n-expansion-collides"],
)
def test_duplicate_rids_in_a_batch_are_400_and_leave_nothing(server, body):
    sampling = body.pop("sampling_params", {})
    if isinstance(sampling, list):
        sampling = [{**s, "max_new_tokens": 2} for s in sampling]
    else:
        sampling = {**sampling, "max_new_tokens": 2}
    response = requests.post(f"{server.base_url}/generate", json={**body, "sampling_params": sampling})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "rid" and "Duplicate request ID" in error["message"]
    for rid in ("dup", "z", "z-0", "z-1"):  # nothing was registered: the ids are free again
        again = requests.post(
            f"{server.base_url}/generate",
            json={"text": PROMPT, "rid": rid, "sampling_params": {"max_new_tokens": 1}},
        )
        assert again.status_code == 200, again.text
        assert requests.post(f"{server.base_url}/abort_request", json={"rid": rid}).status_code == 404


def test_generate_stream_batch_chunks_carry_index(server):
    """A streamed batch tags each chunk with its input's index; both inputs finish; [DONE] last."""
    response = requests.post(
        f"{server.base_url}/generate",
        stream=True,
        json={
            "text": [PROMPT, "Once upon a time"],
            "stream": True,
            # ignore_eos: the default sampling (temperature 1) may draw EOS early, which is not what this checks
            "sampling_params": {"max_new_tokens": 3, "ignore_eos": True},
        },
    )
    lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == b"data: [DONE]"
    chunks = [json.loads(line[len(b"data: ") :]) for line in lines[:-1]]
    finals = {c["index"]: c for c in chunks if c["meta_info"]["finish_reason"] is not None}
    assert sorted(finals) == [0, 1]
    assert all(f["meta_info"]["completion_tokens"] == 3 for f in finals.values())


# ----------------------------------------------------------------------------- info routes
def test_get_model_info_and_alias(server):
    for path in ("/get_model_info", "/model_info"):
        info = requests.get(server.base_url + path).json()
        assert info == {"model_path": server.model_path, "is_generation": True}


@pytest.mark.parametrize("path", ["/get_server_info", "/server_info"])
def test_server_info_has_args_and_live_stats(server, path):
    """Server args plus live statistics: finished-request counters move with a generation."""
    before = requests.get(server.base_url + path).json()
    args = requests.get(f"{server.base_url}/get_server_args").json()
    assert {k: before[k] for k in args if k not in ("max_running_requests", "chunked_prefill_size")} == {
        k: v for k, v in args.items() if k not in ("max_running_requests", "chunked_prefill_size")
    }
    live = {
        "num_running_reqs",
        "num_queue_reqs",
        "num_used_tokens",
        "token_usage",
        "cache_hit_rate",
        "gen_throughput",
        "num_finished_reqs",
        "total_prompt_tokens",
        "total_completion_tokens",
        "max_total_num_tokens",
        "context_len",
        "version",
    }
    assert live <= before.keys()
    assert before["max_total_num_tokens"] == 16384
    generate(server.base_url, text=PROMPT, sampling_params={"max_new_tokens": 5, "ignore_eos": True})
    after = requests.get(server.base_url + path).json()
    assert after["num_finished_reqs"] >= before["num_finished_reqs"] + 1
    assert after["total_completion_tokens"] >= before["total_completion_tokens"] + 5
    assert after["num_running_reqs"] == 0 and after["num_queue_reqs"] == 0


def test_get_memory_pool_size_get_and_post(server):
    for method in ("get", "post"):
        response = requests.request(method, f"{server.base_url}/get_memory_pool_size")
        assert response.status_code == 200
        assert response.json() == 16384


def test_health_routes(server):
    assert requests.get(f"{server.base_url}/health").status_code == 200
    assert requests.get(f"{server.base_url}/health_generate").status_code == 200


# ----------------------------------------------------------------------------- flush / abort
def _start_long_stream(base_url: str, rid: str):
    """A streaming generation that would run for 2000 tokens; returns (response, line iterator) after chunk 1."""
    response = requests.post(
        f"{base_url}/generate",
        stream=True,
        json={
            "text": "Once upon a time",
            "rid": rid,
            "stream": True,
            "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0},
        },
    )
    assert response.status_code == 200
    lines = (line for line in response.iter_lines() if line)
    first = json.loads(next(lines)[len(b"data: ") :])
    assert first["meta_info"]["id"] == rid and first["meta_info"]["finish_reason"] is None
    return response, lines


def test_flush_cache_refused_while_busy_then_abort(server):
    """Flush -> 400 with the reason while a request runs; abort by rid ends it; then flush works."""
    generate(server.base_url, text=PROMPT, sampling_params={"max_new_tokens": 2})
    response, lines = _start_long_stream(server.base_url, "long-flush")
    try:
        busy = requests.post(f"{server.base_url}/flush_cache")
        assert busy.status_code == 400
        assert FLUSH_BUSY.match(busy.text), busy.text
        assert "#running-req: 1" in busy.text
        abort = requests.post(f"{server.base_url}/abort_request", json={"rid": "long-flush"})
        assert abort.status_code == 200
        assert abort.json()["success"] is True
        rest = list(lines)
    finally:
        response.close()
    assert rest[-1] == b"data: [DONE]"
    last = json.loads(rest[-2][len(b"data: ") :])
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert last["meta_info"]["completion_tokens"] < 2000
    assert server_info(server.base_url)["num_cached_tokens"] > 0
    ok = requests.post(f"{server.base_url}/flush_cache")
    assert ok.status_code == 200 and ok.text.startswith("Cache flushed.")
    info = server_info(server.base_url)
    assert info["num_cached_tokens"] == 0 and info["num_used_tokens"] == 0


def test_abort_unknown_rid_is_404(server):
    error = assert_error(
        requests.post(f"{server.base_url}/abort_request", json={"rid": "no-such-rid"}), 404, "rid"
    )
    assert "no-such-rid" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_abort_request_needs_rid_or_abort_all(server):
    assert_error(requests.post(f"{server.base_url}/abort_request", json={}), 400, "rid")


def test_abort_all_ends_streaming_and_plain_requests(server):
    """abort_all ends every request in flight: a stream and a non-streaming one both finish with abort."""
    response, lines = _start_long_stream(server.base_url, "long-all")
    plain: dict = {}

    def run_plain() -> None:
        plain["response"] = requests.post(
            f"{server.base_url}/generate",
            json={
                "text": "A second long story",
                "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True},
            },
        )

    thread = threading.Thread(target=run_plain)
    thread.start()
    try:
        # Wait until the second request is running too (the stream keeps producing meanwhile).
        for _ in lines:
            if server_info(server.base_url)["num_running_reqs"] == 2:
                break
        abort = requests.post(f"{server.base_url}/abort_request", json={"abort_all": True})
        assert abort.status_code == 200
        rest = list(lines)
    finally:
        response.close()
        thread.join(timeout=120)
    assert rest[-1] == b"data: [DONE]"
    assert json.loads(rest[-2][len(b"data: ") :])["meta_info"]["finish_reason"]["type"] == "abort"
    out = plain["response"].json()
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert out["meta_info"]["completion_tokens"] < 2000
    info = server_info(server.base_url)
    assert info["num_running_reqs"] == 0 and info["num_queue_reqs"] == 0
    assert (
        generate(server.base_url, text=PROMPT, sampling_params=GREEDY)["meta_info"]["completion_tokens"] == 16
    )


# ----------------------------------------------------------------------------- /update_weights
@pytest.fixture(scope="module")
def weights_server(server_model_path):
    """A server of its own for the weight swaps."""
    running = start_server(server_model_path, "--max-total-tokens 4096")
    yield running
    stop_server_and_check(running.process)


@pytest.fixture(scope="module")
def bin_only_model_path(same_shape_model_path, tmp_path_factory) -> str:
    """The same-shape checkpoint with its weights as pytorch_model.bin only (no safetensors)."""
    folder = tmp_path_factory.mktemp("bin_only")
    for path in (p for p in Path(same_shape_model_path).iterdir() if p.suffix != ".safetensors"):
        shutil.copy(path, folder / path.name)
    state = {}
    for path in Path(same_shape_model_path).glob("*.safetensors"):
        state.update(load_file(path))
    torch.save(state, folder / "pytorch_model.bin")
    return str(folder)


def test_update_weights_seed_cells(
    weights_server, server_model_path, same_shape_model_path, other_size_model_path
):
    """Seed 001 cells [9] and [10] with their asserts, then the behaviour behind them.

    Success: the radix cache is flushed and greedy outputs become the new checkpoint's. Failure (other sizes):
    400, the torch shape message plus "Rolling back", and greedy outputs unchanged.
    """
    url = f"{weights_server.base_url}/update_weights"
    original = greedy_ids(weights_server.base_url)
    assert original == engine_greedy_ids(server_model_path)
    assert server_info(weights_server.base_url)["num_cached_tokens"] > 0

    response = requests.post(url, json={"model_path": same_shape_model_path})
    assert response.status_code == 200
    assert response.json()["success"] is True
    assert response.json()["message"] == "Succeeded to update model weights."
    assert response.json().keys() == {"success", "message"}
    assert server_info(weights_server.base_url)["num_cached_tokens"] == 0  # flushed
    assert (
        requests.get(f"{weights_server.base_url}/get_model_info").json()["model_path"]
        == same_shape_model_path
    )
    updated = greedy_ids(weights_server.base_url)
    assert updated == engine_greedy_ids(same_shape_model_path)
    assert updated != original

    response = requests.post(url, json={"model_path": other_size_model_path})
    response_json = response.json()
    assert response.status_code == 400
    assert response_json["success"] is False
    assert response_json.keys() == {"success", "message"}
    match = SIZE_MISMATCH.match(response_json["message"])
    assert match, response_json["message"]
    assert match.groups() == ("64", "96")  # served hidden size, then the checkpoint's
    assert greedy_ids(weights_server.base_url) == updated
    assert (
        requests.get(f"{weights_server.base_url}/get_model_info").json()["model_path"]
        == same_shape_model_path
    )


def test_update_weights_from_disk_alias_and_restore(weights_server, server_model_path, same_shape_model_path):
    """The alias works both ways; updating back restores the original greedy outputs."""
    url = f"{weights_server.base_url}/update_weights_from_disk"
    response = requests.post(url, json={"model_path": same_shape_model_path})
    assert response.status_code == 200 and response.json()["success"] is True
    new_ids = greedy_ids(weights_server.base_url)
    response = requests.post(url, json={"model_path": server_model_path})
    assert response.json() == {"success": True, "message": "Succeeded to update model weights."}
    restored = greedy_ids(weights_server.base_url)
    assert restored == engine_greedy_ids(server_model_path) != new_ids


def test_update_weights_missing_path_keeps_serving(weights_server, tmp_path):
    before = greedy_ids(weights_server.base_url)
    missing = str(tmp_path / "no-such-model")
    response = requests.post(f"{weights_server.base_url}/update_weights", json={"model_path": missing})
    assert response.status_code == 400
    body = response.json()
    assert body.keys() == {"success", "message"} and body["success"] is False
    assert body["message"].startswith("Failed to update weights: ")
    assert missing in body["message"]
    assert body["message"].endswith("\nRolling back to original weights.")
    assert greedy_ids(weights_server.base_url) == before


def test_update_weights_refuses_bin_only_folder(weights_server, bin_only_model_path):
    before = greedy_ids(weights_server.base_url)
    response = requests.post(
        f"{weights_server.base_url}/update_weights", json={"model_path": bin_only_model_path}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False
    assert "safetensors" in body["message"] and "pytorch_model.bin" in body["message"]
    assert greedy_ids(weights_server.base_url) == before


def test_update_weights_bad_body(weights_server):
    assert_error(requests.post(f"{weights_server.base_url}/update_weights", json={}), 400, "model_path")
    assert_error(
        requests.post(f"{weights_server.base_url}/update_weights", json={"model_path": 3}), 400, "model_path"
    )


def test_update_weights_waits_for_requests_in_flight(
    weights_server, server_model_path, same_shape_model_path
):
    """An update sent during a streaming generation lets it finish unharmed (old weights), then swaps."""
    old_ids = engine_greedy_ids(server_model_path, max_new_tokens=48)
    assert greedy_ids(weights_server.base_url) == old_ids[:16]  # currently the original weights
    response = requests.post(
        f"{weights_server.base_url}/generate",
        stream=True,
        json={"text": PROMPT, "stream": True, "sampling_params": {"temperature": 0, "max_new_tokens": 48}},
    )
    lines = (line for line in response.iter_lines() if line)
    next(lines)
    result: dict = {}

    def update() -> None:
        result["response"] = requests.post(
            f"{weights_server.base_url}/update_weights", json={"model_path": same_shape_model_path}
        )

    thread = threading.Thread(target=update)
    thread.start()
    rest = list(lines)
    thread.join(timeout=300)
    assert rest[-1] == b"data: [DONE]"
    assert json.loads(rest[-2][len(b"data: ") :])["output_ids"] == old_ids
    assert result["response"].json()["success"] is True
    assert greedy_ids(weights_server.base_url) == engine_greedy_ids(same_shape_model_path)
    requests.post(f"{weights_server.base_url}/update_weights", json={"model_path": server_model_path})


def test_metrics_disabled_without_flag(weights_server):
    """Without --enable-metrics, /metrics is a 404 error body naming the flag."""
    error = assert_error(requests.get(f"{weights_server.base_url}/metrics"), 404)
    assert "--enable-metrics" in error["message"]
