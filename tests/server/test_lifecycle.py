"""Server process lifecycle with the notebook helpers (sglkit/utils.py, launch/process.py,
launch/session_watchdog.py) and the server's own process handling (sglkit/server/http_server.py,
scheduler_process.py, tokenizer_manager.py).

Every test here destroys server state, so each starts its own server (never the shared one) and ends it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import psutil
import pytest
import requests

from sglkit.utils import execute_shell_command, launch_server_cmd, terminate_process, wait_for_server
from tests.server.conftest import start_server

LAUNCH = "python -m sglkit.launch_server --model-path {model}"
LONG = {"temperature": 0, "max_new_tokens": 1900, "ignore_eos": True}

DRIVER = """
import json, sys, time
from sglkit.utils import launch_server_cmd, wait_for_server
process, port = launch_server_cmd(sys.argv[1], echo=False)
wait_for_server(f"http://127.0.0.1:{port}", timeout=300, process=process, print_note=False)
print(json.dumps({"pid": process.pid, "port": port}), flush=True)
time.sleep(600)
"""


def live(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``procs`` still running (zombies count as gone)."""
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.NoSuchProcess:
            continue
    return out


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Poll until every process of ``procs`` is gone or ``timeout`` s pass; returns the survivors."""
    deadline = time.monotonic() + timeout
    while (alive := live(procs)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def scheduler_of(server_pid: int) -> psutil.Process:
    """The scheduler process (the multiprocessing-spawned child) of a running server."""
    children = [
        p for p in psutil.Process(server_pid).children() if "multiprocessing.spawn" in " ".join(p.cmdline())
    ]
    assert len(children) == 1, [p.cmdline() for p in psutil.Process(server_pid).children()]
    return children[0]


def port_is_free(port: int) -> bool:
    """True when ``127.0.0.1:port`` can be bound (nothing listens there)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ipc_paths(server_pid: int) -> list[str]:
    """The ZMQ IPC socket files the server process has open."""
    return [c.laddr for c in psutil.Process(server_pid).net_connections(kind="unix") if c.laddr]


def _read_stream(url: str, out: list) -> None:
    try:
        with requests.post(
            f"{url}/generate",
            stream=True,
            timeout=60,
            json={"text": "A long story:", "sampling_params": LONG, "stream": True},
        ) as resp:
            for line in resp.iter_lines():
                out.append(line)
    except requests.RequestException as e:  # a cut connection is an acceptable end; a hang is not
        out.append(repr(e))


def test_terminate_process_ends_the_whole_tree_even_mid_stream(server_model_path):
    running = start_server(server_model_path)
    lines: list = []
    reader = threading.Thread(target=_read_stream, args=(running.base_url, lines), daemon=True)
    try:
        members = tree(running.process.pid)
        assert scheduler_of(running.process.pid) in members
        reader.start()
        deadline = time.monotonic() + 30
        while len(lines) < 3:  # the stream is flowing
            assert time.monotonic() < deadline and reader.is_alive(), lines
            time.sleep(0.02)
    finally:
        terminate_process(running.process)
    assert live(members) == []
    assert port_is_free(running.process.port)
    reader.join(timeout=10)
    assert not reader.is_alive()  # the client's stream ended with the server
    terminate_process(running.process)  # idempotent


def test_sigterm_to_the_server_alone_stops_its_scheduler_and_cleans_up(server_model_path):
    """What ``kill PID`` or a supervisor does: only the server process gets SIGTERM."""
    running = start_server(server_model_path)
    try:
        members = tree(running.process.pid)
        scheduler = scheduler_of(running.process.pid)
        sockets = ipc_paths(running.process.pid)
        assert sockets and all(os.path.exists(path) for path in sockets)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=30) == 128 + signal.SIGTERM  # it unwound, not killed outright
        assert wait_gone([scheduler], timeout=5.0) == []
        assert wait_gone(members, timeout=5.0) == []  # incl. multiprocessing's resource tracker
        assert not any(os.path.exists(os.path.dirname(path)) for path in sockets)  # the IPC folder is removed
        log = running.log()
        assert "Uvicorn running on" in log and "Shutting down" in log and "Finished server process" in log
    finally:
        terminate_process(running.process)


def test_sigkill_of_the_launching_python_takes_the_server_down(server_model_path, tmp_path):
    driver_path = tmp_path / "driver.py"
    driver_path.write_text(DRIVER)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    driver = subprocess.Popen(
        [sys.executable, str(driver_path), LAUNCH.format(model=server_model_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    members: list[psutil.Process] = []
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(driver.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=300)
        assert lines and lines[0], "the driver never reported a ready server"
        info = json.loads(lines[0])
        members = tree(driver.pid)
        server_pids = {p.pid for p in tree(info["pid"])}
        assert scheduler_of(info["pid"]).pid in server_pids
        assert requests.get(f"http://127.0.0.1:{info['port']}/health", timeout=5).status_code == 200

        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        survivors = wait_gone(members, timeout=5.0)
        assert survivors == [], [p.cmdline() for p in survivors]
        assert port_is_free(info["port"])
    finally:
        for proc in live(members):  # only what this test started
            proc.kill()
        if driver.poll() is None:
            driver.kill()
        driver.wait(timeout=10)


def test_wait_for_server_raises_with_the_error_for_a_bad_model_path(tmp_path):
    missing = tmp_path / "no-such-model"
    process, port = launch_server_cmd(LAUNCH.format(model=missing), echo=False)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError) as info:
            wait_for_server(
                f"http://127.0.0.1:{port}", timeout=120, print_note=False
            )  # finds the process by port
        assert time.monotonic() - started < 120
        message = str(info.value)
        assert "exited with code 1" in message
        assert f"Model path '{missing}' does not exist" in message
    finally:
        terminate_process(process)


def test_a_port_in_use_is_reported_with_the_port():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"Port {port} is already in use"):
            launch_server_cmd(LAUNCH.format(model="unused"), port=port, echo=False)
        # Started without the helper's check, the server itself refuses the port before loading the model.
        process = execute_shell_command(LAUNCH.format(model="unused") + f" --port {port}", echo=False)
        try:
            with pytest.raises(RuntimeError) as info:
                wait_for_server(f"http://127.0.0.1:{port}", timeout=120, process=process, print_note=False)
            assert f"Port {port} on 127.0.0.1 is already in use" in str(info.value)
        finally:
            terminate_process(process)


def _post_json(url: str, body: dict, out: dict) -> None:
    try:
        resp = requests.post(url, json=body, timeout=60)
        out["status"], out["body"] = resp.status_code, resp.text
    except requests.RequestException as e:  # recorded, so the assertion below names it
        out["status"], out["body"] = None, repr(e)


def test_a_dead_scheduler_makes_the_server_unhealthy_without_hangs(server_model_path):
    running = start_server(server_model_path)
    base = running.base_url
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="None", max_retries=0, timeout=60)
    try:
        members = tree(running.process.pid)
        plain: dict = {}
        plain_thread = threading.Thread(
            target=_post_json,
            daemon=True,
            args=(f"{base}/generate", {"text": "A long story:", "sampling_params": LONG}, plain),
        )
        plain_thread.start()
        stream = requests.post(
            f"{base}/generate",
            stream=True,
            timeout=60,
            json={"text": "Another long story:", "sampling_params": LONG, "stream": True},
        )
        lines = (line for line in stream.iter_lines() if line)
        assert next(lines).startswith(b"data: {")
        chat_stream = client.chat.completions.create(
            model=running.model_path,
            messages=[{"role": "user", "content": "Go on."}],
            max_tokens=1900,
            extra_body={"ignore_eos": True},
            stream=True,
        )
        chat_chunks = iter(chat_stream)
        assert next(chat_chunks).choices[0].delta.role == "assistant"
        deadline = time.monotonic() + 30
        while requests.get(f"{base}/get_server_info", timeout=10).json()["num_running_reqs"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        scheduler_of(running.process.pid).send_signal(signal.SIGKILL)

        rest = [line.decode() for line in lines]  # ends: the stream does not hang
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2][len("data: ") :])["error"]
        assert "scheduler process died" in error["message"]
        with pytest.raises(openai.APIError, match="scheduler process died"):
            for (
                _
            ) in chat_chunks:  # the OpenAI stream ends with an in-band error event, which the client raises
                pass
        plain_thread.join(timeout=30)
        assert not plain_thread.is_alive()
        assert plain["status"] == 503 and "scheduler process died" in plain["body"]

        deadline = time.monotonic() + 5
        while requests.get(f"{base}/health", timeout=2).status_code != 503:
            assert time.monotonic() < deadline, "/health still answers 200 with a dead scheduler"
            time.sleep(0.1)
        resp = requests.post(
            f"{base}/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 2}}, timeout=10
        )
        assert resp.status_code == 503 and resp.json()["error"]["type"] == "server_error"
        resp = requests.post(
            f"{base}/v1/chat/completions",
            timeout=10,
            json={
                "model": running.model_path,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 2,
            },
        )
        assert resp.status_code == 503
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model=running.model_path, prompt="Hi", max_tokens=2)
        assert info.value.status_code == 503 and "scheduler process died" in info.value.message
        assert requests.get(f"{base}/health_generate", timeout=10).status_code == 503
        assert requests.get(f"{base}/get_server_info", timeout=10).status_code == 503
        assert "The scheduler process died" in running.log()
        # It does not serve 503 forever: after a short delay the server exits, non-zero, and says why.
        assert running.process.wait(timeout=60) == 1
        assert "Exiting: the scheduler process died." in running.log()
    finally:
        client.close()
        terminate_process(running.process)
    assert live(members) == []
