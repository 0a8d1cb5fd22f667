"""Tensor-parallel servers (sglkit/runtime/scheduler/rank_group.py, mirror.py, replicas.start_scheduler):
``--tp-size 2`` on one node and split over two simulated nodes serves tp 1's greedy answers; control requests
reach every rank; a node that dies makes the other fail cleanly (503, errors for in-flight requests, exit, no
orphan process). Every test starts its own servers and stops them.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import requests

import sglkit
from sglkit.launch.ports import pick_free_port
from sglkit.utils import execute_shell_command, terminate_process
from tests.server.conftest import start_server
from tests.server.test_lifecycle import live, tree, wait_gone

PROMPTS = [
    "The capital of France is",
    "numbers like 12 and 345 appear in lists of items such as apples pears and plums",
    "Once upon a time",
    "the capital of Japan is Tokyo while",
]
GREEDY = {"temperature": 0, "max_new_tokens": 10, "ignore_eos": True}


def tp1_answers(model_path: str) -> list[list[int]]:
    """Greedy output ids of PROMPTS from an in-process tp_size=1 Engine (the reference)."""
    with sglkit.Engine(model_path=model_path, max_total_tokens=2048, random_seed=0) as llm:
        return [o["output_ids"] for o in llm.generate(PROMPTS, [GREEDY] * len(PROMPTS))]


def served_answers(base_url: str) -> list[list[int]]:
    """Greedy output ids of PROMPTS from a running server (one batched /generate)."""
    resp = requests.post(
        f"{base_url}/generate", json={"text": PROMPTS, "sampling_params": GREEDY}, timeout=120
    )
    resp.raise_for_status()
    return [o["output_ids"] for o in resp.json()]


def server_info(base_url: str) -> dict:
    """/get_server_info as a dict."""
    resp = requests.get(f"{base_url}/get_server_info", timeout=30)
    resp.raise_for_status()
    return resp.json()


def test_tp2_serves_tp1_answers_and_control_requests_reach_every_rank(
    server_model_path, same_shape_model_path
):
    expected = tp1_answers(server_model_path)
    running = start_server(server_model_path, "--tp-size 2 --max-total-tokens 2048")
    try:
        members = tree(running.process.pid)
        assert len([p for p in members if "multiprocessing.spawn" in " ".join(p.cmdline())]) == 2
        assert served_answers(running.base_url) == expected
        info = server_info(running.base_url)
        assert info["tp_size"] == 2 and len(info["tp_ranks"]) == 2
        assert all(
            rank["num_cached_tokens"] > 0 for rank in info["tp_ranks"]
        )  # both ranks cached the prompts

        assert requests.post(f"{running.base_url}/flush_cache", timeout=30).status_code == 200
        assert [rank["num_cached_tokens"] for rank in server_info(running.base_url)["tp_ranks"]] == [0, 0]

        resp = requests.post(
            f"{running.base_url}/update_weights_from_disk",
            json={"model_path": same_shape_model_path},
            timeout=120,
        )
        assert resp.status_code == 200 and resp.json()["success"], resp.text
        ranks = server_info(running.base_url)["tp_ranks"]
        assert [rank["model_path"] for rank in ranks] == [same_shape_model_path] * 2
        assert served_answers(running.base_url) == tp1_answers(same_shape_model_path)
        assert "TP1]" in running.log() and "TP0]" in running.log()
    finally:
        terminate_process(running.process)
    assert wait_gone(members, timeout=5.0) == []


def _stream_until_end(url: str, out: list) -> None:
    try:
        with requests.post(
            f"{url}/generate",
            stream=True,
            timeout=120,
            json={
                "text": "A long story:",
                "stream": True,
                "sampling_params": {"temperature": 0, "max_new_tokens": 1500, "ignore_eos": True},
            },
        ) as resp:
            out.extend(line for line in resp.iter_lines() if line)
    except requests.RequestException as e:  # a cut connection also ends it; a hang would not
        out.append(repr(e))


def test_two_simulated_nodes_serve_tp1_answers_and_a_dead_node_ends_the_server(server_model_path):
    expected = tp1_answers(server_model_path)
    os.environ.setdefault("SGLKIT_ECHO_LOGS", "0")
    common = (
        f"--tp-size 2 --nnodes 2 --max-total-tokens 4096 --dist-init-addr 127.0.0.1:{pick_free_port()} "
        "--dist-timeout 60"
    )
    node1 = execute_shell_command(
        f"python -m sglkit.launch_server --model-path {server_model_path} {common} --node-rank 1", echo=False
    )
    members: list[psutil.Process] = []
    node0 = None
    try:
        node0 = start_server(server_model_path, common, "--node-rank 0")
        members = tree(node0.process.pid) + tree(node1.pid)
        assert len([p for p in members if "multiprocessing.spawn" in " ".join(p.cmdline())]) == 2
        assert served_answers(node0.base_url) == expected
        assert server_info(node0.base_url)["tp_size"] == 2

        lines: list = []
        reader = threading.Thread(target=_stream_until_end, args=(node0.base_url, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while len(lines) < 3:  # a request is in flight
            assert time.monotonic() < deadline and reader.is_alive(), lines
            time.sleep(0.02)

        killed_at = time.monotonic()
        node1.send_signal(signal.SIGKILL)
        reader.join(timeout=30)
        assert not reader.is_alive()  # the in-flight stream ended, with an error
        assert any("scheduler process died" in str(line) for line in lines[-3:]), lines[-3:]
        unhealthy_at = None
        while node0.process.poll() is None:
            assert time.monotonic() - killed_at < 60, "node 0 still running 60 s after node 1 died"
            if unhealthy_at is None:
                try:
                    if requests.get(f"{node0.base_url}/health", timeout=2).status_code == 503:
                        unhealthy_at = time.monotonic()
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        exited_at = time.monotonic()
        assert unhealthy_at is not None, "node 0 never answered 503 on /health"
        assert node0.process.returncode == 1
        assert wait_gone(members, timeout=10.0) == [], [p.cmdline() for p in live(members)]
        assert "Exiting: the scheduler process died." in node0.log()
        print(
            f"node 1 killed -> node 0 unhealthy after {unhealthy_at - killed_at:.1f} s, "
            f"exited after {exited_at - killed_at:.1f} s"
        )
    finally:
        if node0 is not None:
            terminate_process(node0.process)
        terminate_process(node1)
    assert live(members) == []
