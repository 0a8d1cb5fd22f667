"""Data parallelism end to end (--dp-size 2): the router (sglkit/server/router.py), the tokenizer manager's
replica dispatch and control fan-out (tokenizer_manager.py, replica_stats.py, native_api.py) and the replica loop
of http_server.launch_server, on real server subprocesses with a tiny Llama.

Greedy answers are checked against the offline ``sglkit.Engine`` (one replica); routing is observed through each
replica's statistics in /get_server_info.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import time

import psutil
import pytest
import requests

import sglkit
from sglkit import server_args
from sglkit.server import router
from sglkit.utils import terminate_process
from sglkit.widgets import ServerDashboard
from tests.server.conftest import start_server

PROMPTS = ["The capital of France is", "Once upon a time", "List 3 countries.", "Water boils at"]
GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


def server_tree(process) -> list[psutil.Process]:
    """The launched server's process and all its descendants."""
    root = psutil.Process(process.pid)
    return [root, *root.children(recursive=True)]


def replica_processes(process) -> list[psutil.Process]:
    """The scheduler processes (multiprocessing spawn children) under the server."""
    return [p for p in server_tree(process) if "spawn_main" in " ".join(p.cmdline())]


def stop_and_check(process) -> None:
    """terminate_process, then assert the whole tree (HTTP process and every replica) is gone."""
    tree = server_tree(process)
    terminate_process(process)
    alive = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"


def info(server) -> dict:
    response = requests.get(f"{server.base_url}/get_server_info", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def replica_stat(server, key: str) -> list:
    return [r[key] for r in info(server)["replicas"]]


def generate(server, **body) -> dict | list:
    response = requests.post(f"{server.base_url}/generate", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def flush(server) -> None:
    response = requests.post(f"{server.base_url}/flush_cache", timeout=30)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def dp_server(server_model_path):
    """A dp 2 server with the default (cache_aware) router; stopping it must leave no replica behind."""
    os.environ.setdefault("SGLKIT_ECHO_LOGS", "0")
    running = start_server(server_model_path, "--dp-size 2", "--enable-metrics", "--max-total-tokens 4096")
    yield running
    stop_and_check(running.process)


def test_flags_and_validation():
    assert server_args.LOAD_BALANCE_METHODS == router.LOAD_BALANCE_METHODS
    args = server_args.prepare_server_args(["--dp", "3", "--load-balance-method", "shortest_queue"])
    assert (args.dp_size, args.load_balance_method) == (3, "shortest_queue")
    assert server_args.ServerArgs().load_balance_method == "cache_aware"
    with pytest.raises(ValueError, match="dp_size must be a positive integer"):
        server_args.ServerArgs(dp_size=0)
    with pytest.raises(ValueError, match="load_balance_method"):
        server_args.ServerArgs(load_balance_method="random")
    if "nnodes" in {f.name for f in dataclasses.fields(server_args.ServerArgs)}:  # with multi-node support
        with pytest.raises(ValueError, match="nnodes > 1"):
            server_args.ServerArgs(dp_size=2, nnodes=2, tp_size=2, dist_init_addr="127.0.0.1:5000")
    with pytest.raises(ValueError, match="launch_server --dp-size"):
        sglkit.Engine(dp_size=2)


def test_greedy_answers_equal_one_replica_and_both_replicas_serve(dp_server, server_model_path):
    engine = sglkit.Engine(model_path=server_model_path, max_total_tokens=1024)
    try:
        expected = [out["output_ids"] for out in engine.generate(PROMPTS, GREEDY)]
    finally:
        engine.shutdown()
    before = replica_stat(dp_server, "num_finished_reqs")
    outs = generate(dp_server, text=PROMPTS, sampling_params=GREEDY)
    assert [o["output_ids"] for o in outs] == expected
    after = info(dp_server)
    assert after["dp_size"] == 2 and len(after["replicas"]) == 2
    served = [a - b for a, b in zip([r["num_finished_reqs"] for r in after["replicas"]], before)]
    assert sum(served) == 4 and min(served) >= 1, served  # the batch was spread over both replicas
    assert after["num_finished_reqs"] == sum(r["num_finished_reqs"] for r in after["replicas"])
    assert after["max_total_num_tokens"] == 2 * 4096
    assert after["router"]["load_balance_method"] == "cache_aware"
    metrics = requests.get(f"{dp_server.base_url}/metrics", timeout=30).text
    pools = [line for line in metrics.splitlines() if line.startswith("sglang:max_total_num_tokens{")]
    # One series per replica, as SGLang's schedulers (no total series: summing them gives the server's).
    assert len(pools) == 2 and 'dp_rank="0"' in pools[0] and 'dp_rank="1"' in pools[1]
    assert all(line.endswith(" 4096.0") for line in pools), pools
    dashboard = ServerDashboard(dp_server.base_url, chat=False)  # the widget shows both replicas
    try:
        assert dashboard.state == "ready"
        assert dashboard.replicas_html.value.count("<tr class='sglkit-replica'>") == 2
        assert "replicas: 2, router: cache_aware" in repr(dashboard)
    finally:
        dashboard.close()
    if "OMP_NUM_THREADS" not in os.environ:  # each replica got its share of the cores
        share = str(max(1, len(os.sched_getaffinity(0)) // 2))
        assert [p.environ().get("OMP_NUM_THREADS") for p in replica_processes(dp_server.process)][:2] == [
            share,
            share,
        ]


def shared_prefix_run(server, vocab_size: int) -> tuple[list[int], float]:
    """3 groups x 4 requests sharing a 150-token prefix per group, sent one at a time, groups interleaved.

    Returns the replica that served each request and the cache hit rate of the run (flushed before).
    """
    rng = random.Random(0)
    prefixes = [[rng.randrange(3, vocab_size) for _ in range(150)] for _ in range(3)]
    flush(server)
    replicas = []
    for _ in range(4):
        for prefix in prefixes:
            before = replica_stat(server, "num_finished_reqs")
            suffix = [rng.randrange(3, vocab_size) for _ in range(8)]
            generate(server, input_ids=prefix + suffix, sampling_params={"max_new_tokens": 1})
            after = replica_stat(server, "num_finished_reqs")
            replicas.append(next(i for i in range(2) if after[i] > before[i]))
    return replicas, info(server)["cache_hit_rate"]


def test_shared_prefixes_stay_on_one_replica_and_hit_more_than_round_robin(dp_server, server_model_path):
    vocab_size = info(dp_server)["vocab_size"]
    aware, aware_rate = shared_prefix_run(dp_server, vocab_size)
    for group in range(3):
        assert len({aware[i] for i in range(group, 12, 3)}) == 1, aware  # one replica per prefix
    assert len(set(aware)) == 2  # and the groups were spread over both
    rr_server = start_server(
        server_model_path, "--dp-size 2", "--load-balance-method round_robin", "--skip-server-warmup"
    )
    try:
        rr, rr_rate = shared_prefix_run(rr_server, vocab_size)
        assert info(rr_server)["router"]["decisions"] == {"round_robin": 12}
    finally:
        stop_and_check(rr_server.process)
    assert rr == [(rr[0] + i) % 2 for i in range(12)]
    assert aware_rate > rr_rate + 0.15, (aware_rate, rr_rate)


def test_flush_and_update_weights_reach_both_replicas(dp_server, server_model_path, same_shape_model_path):
    generate(dp_server, text=PROMPTS[:2], sampling_params=GREEDY)  # one prompt per replica
    assert min(replica_stat(dp_server, "num_cached_tokens")) > 0
    flush(dp_server)
    assert replica_stat(dp_server, "num_cached_tokens") == [0, 0]
    assert info(dp_server)["router"]["tree_tokens"] == [0, 0]

    def update(path: str) -> requests.Response:
        url = f"{dp_server.base_url}/update_weights_from_disk"
        return requests.post(url, json={"model_path": path}, timeout=300)

    try:
        response = update(same_shape_model_path)
        assert response.status_code == 200 and response.json()["success"] is True, response.text
        assert replica_stat(dp_server, "model_path") == [same_shape_model_path] * 2
        model = requests.get(f"{dp_server.base_url}/get_model_info", timeout=30).json()
        assert model["model_path"] == same_shape_model_path
        bad = update(os.path.join(server_model_path, "no-such-folder"))
        assert bad.status_code == 400 and bad.json()["success"] is False
        assert replica_stat(dp_server, "model_path") == [same_shape_model_path] * 2
    finally:
        assert update(server_model_path).status_code == 200
    assert replica_stat(dp_server, "model_path") == [server_model_path] * 2


def _long_stream(server, rid: str, text: str):
    params = {"max_new_tokens": 2000, "ignore_eos": True}
    body = {"text": text, "rid": rid, "stream": True, "sampling_params": params}
    response = requests.post(f"{server.base_url}/generate", json=body, stream=True, timeout=120)
    assert response.status_code == 200
    lines = (line for line in response.iter_lines() if line)
    next(lines)  # running
    return response, lines


def _finish_reason(lines) -> str:
    rest = list(lines)
    assert rest[-1] == b"data: [DONE]"
    return json.loads(rest[-2][len(b"data: ") :])["meta_info"]["finish_reason"]["type"]


def test_abort_reaches_the_right_replica_and_nothing_leaks(dp_server):
    first, first_lines = _long_stream(dp_server, "dp-long-a", "A long story about the sea")
    second, second_lines = _long_stream(dp_server, "dp-long-b", "Quite another tale, of mountains")
    try:
        assert replica_stat(dp_server, "num_running_reqs") == [1, 1]  # the least loaded took the second
        abort = requests.post(f"{dp_server.base_url}/abort_request", json={"rid": "dp-long-a"}, timeout=30)
        assert abort.status_code == 200
        assert _finish_reason(first_lines) == "abort"
        assert sum(replica_stat(dp_server, "num_running_reqs")) == 1  # the other one still runs
        abort_all = requests.post(f"{dp_server.base_url}/abort_request", json={"abort_all": True}, timeout=30)
        assert abort_all.status_code == 200
        assert _finish_reason(second_lines) == "abort"
    finally:
        first.close()
        second.close()
    stats = info(dp_server)
    for replica in stats["replicas"]:
        assert replica["num_running_reqs"] == replica["num_queue_reqs"] == replica["num_used_tokens"] == 0
    flush(dp_server)  # refused if anything were still in flight anywhere
    assert replica_stat(dp_server, "num_cached_tokens") == [0, 0]
    assert replica_stat(dp_server, "num_used_tokens") == [0, 0]


def test_a_dead_replica_makes_the_server_unhealthy(dp_server):
    """Runs last: kills replica 1; the fixture then checks the rest of the tree stops."""
    assert requests.get(f"{dp_server.base_url}/health", timeout=10).status_code == 200
    replicas = replica_processes(dp_server.process)
    assert len(replicas) >= 2
    replicas[-1].send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while requests.get(f"{dp_server.base_url}/health", timeout=10).status_code != 503:
        assert time.monotonic() < deadline, "/health stayed 200 after a replica died"
        time.sleep(0.2)
    response = requests.post(
        f"{dp_server.base_url}/generate", json={"text": "Hi", "sampling_params": GREEDY}, timeout=30
    )
    assert response.status_code == 503
