"""Notebook helpers (sglkit.utils, sglkit.process, sglkit.ports, sglkit.log_relay) against stand-in servers.

The stand-in is a tiny http.server script run as a real subprocess: /health answers 503 until --ready-after
seconds have passed, then 200; it can crash at start, demand an API key, ignore SIGTERM and spawn a process
tree. Every test ends what it starts and checks with psutil that nothing of the tree is left.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

import sglkit.process as process_mod
from sglkit.ports import is_port_free, pick_free_port, unclaim_port
from sglkit.process import parse_command, registered_processes
from sglkit.utils import (
    execute_shell_command,
    kill_all_servers,
    launch_server_cmd,
    print_highlight,
    tail_log,
    terminate_process,
    wait_for_server,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

STANDIN = r"""
import argparse, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--ready-after", type=float, default=0.0)
parser.add_argument("--crash", default=None)
parser.add_argument("--spawn-tree", action="store_true")
parser.add_argument("--ignore-sigterm", action="store_true")
args = parser.parse_args()
api_key = os.environ.get("STANDIN_API_KEY")

print("stand-in starting", flush=True)
if args.crash:
    print("Traceback (most recent call last):", flush=True)
    print(args.crash, file=sys.stderr, flush=True)
    sys.exit(3)
if args.ignore_sigterm:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if args.spawn_tree:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stubborn = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('stubborn ready', flush=True); time.sleep(600)"])
    # A double fork: the middle process exits, so the last one leaves the parent/child tree (stays in the session).
    middle = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print(p.pid, flush=True)"],
        stdout=subprocess.PIPE, text=True)
    orphan_pid = int(middle.stdout.readline())
    middle.wait()
    print(f"TREE {sleeper.pid} {stubborn.pid} {orphan_pid}", flush=True)

start = time.monotonic()

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if api_key and self.headers.get("Authorization") != f"Bearer {api_key}":
            return self._send(401)
        if self.path == "/health":
            return self._send(200 if time.monotonic() - start >= args.ready_after else 503)
        return self._send(404)

    def _send(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass

server = ThreadingHTTPServer((args.host, args.port), Handler)
print(f"listening on {args.port}", flush=True)
server.serve_forever()
"""


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("standin") / "standin.py"
    path.write_text(STANDIN)
    return str(path)


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """Pid files and logs go to a per-test directory; afterwards nothing launched may remain registered."""
    state = tmp_path / "sglkit-state"
    for sub in ("logs", "pids"):
        (state / sub).mkdir(parents=True)
    monkeypatch.setattr(process_mod, "_state_dir_path", state)
    kill_all_servers(grace_period=1.0, include_stale=False)  # start clean: judge only what this test leaves
    yield state
    leftover = registered_processes()
    kill_all_servers(grace_period=1.0, include_stale=False)
    assert leftover == [], "a test left processes registered"


def _free_port() -> int:
    port = pick_free_port()
    unclaim_port(port)
    return port


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for_log(process: subprocess.Popen, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = tail_log(process, 200)
        if text in tail:
            return tail
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log:\n{tail_log(process, 200)}")


def _tree_pids(process: subprocess.Popen) -> set[int]:
    return {process.pid} | {c.pid for c in psutil.Process(process.pid).children(recursive=True)}


# -- command parsing -------------------------------------------------------------------------------------------


def test_parse_command_env_quoting_and_continuations():
    command = (
        "\nCUDA_VISIBLE_DEVICES=0 MSG=\"hello world\" python -m sglkit.launch_server --model-path 'my model' \\\n"
        "    --port=30010 \\   \n"  # stray spaces after the backslash are tolerated
        '    --chat-template "{{ x }}"\n'
    )
    argv, env = parse_command(command)
    assert env == {"CUDA_VISIBLE_DEVICES": "0", "MSG": "hello world"}
    assert argv == [
        "python", "-m", "sglkit.launch_server", "--model-path", "my model", "--port=30010",
        "--chat-template", "{{ x }}",
    ]  # fmt: skip
    # Only *leading* assignments are environment; a flag value with "=" stays an argument.
    assert parse_command("A=1 run --opt=B=2 C=3") == (["run", "--opt=B=2", "C=3"], {"A": "1"})
    assert parse_command("/usr/bin/env-thing X=1")[1] == {}


@pytest.mark.parametrize("command", ["", "   \n", "A=1", "A=1 B='two words'"])
def test_parse_command_without_a_program_raises(command):
    with pytest.raises(ValueError):
        parse_command(command)


def test_execute_shell_command_passes_env_and_quoted_args():
    process = execute_shell_command(
        """GREETING="hello  world" python -c \\
        "import os, sys; print(os.environ['GREETING'] + '|' + '|'.join(sys.argv[1:]))" 'a b' c""",
        echo=False,
    )
    assert process.wait(timeout=60) == 0
    assert tail_log(process, 1) == "hello  world|a b|c"
    assert process.argv[0] == sys.executable  # a bare `python` runs this interpreter
    terminate_process(process)


# -- logs ------------------------------------------------------------------------------------------------------


def test_logs_go_to_file_tail_and_stdout(capsys):
    script = "import sys\nfor i in range(3000): print(f'line {i}')\nprint('to stderr', file=sys.stderr)\nprint('no newline', end='')"
    process = execute_shell_command(f"python -c {shlex.quote(script)}", echo=True)
    assert process.wait(timeout=60) == 0
    assert tail_log(process, 3).splitlines() == ["line 2999", "to stderr", "no newline"]
    terminate_process(process)  # joins the relay: the file and the echo are complete
    text = Path(process.log_path).read_text()
    assert text.startswith("line 0\nline 1\n") and text.endswith("to stderr\nno newline")
    assert len(text.splitlines()) == 3002
    out = capsys.readouterr().out
    assert "line 1500\n" in out and "to stderr\n" in out


def test_a_flood_of_output_never_blocks_the_child():
    # ~8 MB on one pipe without echo: far more than a pipe buffer holds; the child must still finish.
    process = execute_shell_command(
        "python -c \"import sys; [sys.stdout.write('x' * 79 + chr(10)) for _ in range(100000)]\"", echo=False
    )
    assert process.wait(timeout=120) == 0
    terminate_process(process)
    assert os.path.getsize(process.log_path) == 80 * 100000
    assert tail_log(process, 1) == "x" * 79


# -- wait_for_server -------------------------------------------------------------------------------------------


def test_wait_for_server_returns_once_healthy(standin, capsys):
    port = _free_port()
    process = execute_shell_command(f"python {standin} --port {port} --ready-after 1.5", echo=False)
    try:
        wait_for_server(f"http://localhost:{port}", timeout=60)  # process found in the registry by port
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert "NOTE: Typically, the server runs in a separate terminal." in capsys.readouterr().out
    finally:
        terminate_process(process)


def test_wait_for_server_raises_at_once_when_the_process_exits(standin):
    port = _free_port()
    process = execute_shell_command(
        f"python {standin} --port {port} --crash 'RuntimeError: no GPU found (stand-in)'", echo=False
    )
    with pytest.raises(RuntimeError, match="exited with code 3") as info:
        wait_for_server(f"http://127.0.0.1:{port}", timeout=120, process=process, print_note=False)
    assert "RuntimeError: no GPU found (stand-in)" in str(info.value)  # the log tail explains the crash
    terminate_process(process)
    terminate_process(process)  # idempotent on an exited process


def test_wait_for_server_times_out_when_nothing_listens():
    with pytest.raises(TimeoutError, match="ConnectionError"):
        wait_for_server(f"http://127.0.0.1:{_free_port()}", timeout=1.0, print_note=False)


def test_wait_for_server_times_out_when_the_server_never_answers():
    with socket.socket() as listener:  # accepts connections (backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(TimeoutError):
            wait_for_server(url, timeout=1.0, request_timeout=30.0, print_note=False)


def test_wait_for_server_api_key(standin):
    port = _free_port()
    process = execute_shell_command(f"STANDIN_API_KEY=secret python {standin} --port {port}", echo=False)
    url = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(PermissionError, match="api_key"):
            wait_for_server(url, timeout=120, process=process, print_note=False)
        with pytest.raises(PermissionError, match="rejected"):
            wait_for_server(url, timeout=120, process=process, api_key="wrong", print_note=False)
        wait_for_server(url, timeout=60, process=process, api_key="secret", print_note=False)
    finally:
        terminate_process(process)


def test_wait_for_server_ignores_proxy_settings(standin, monkeypatch):
    port = _free_port()
    process = execute_shell_command(f"python {standin} --port {port}", echo=False)
    dead_proxy = f"http://127.0.0.1:{_free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        wait_for_server(f"http://127.0.0.1:{port}", timeout=60, process=process, print_note=False)
    finally:
        terminate_process(process)


def test_wait_for_server_does_not_trust_an_old_server_on_the_port(standin):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    old = subprocess.Popen(
        [PY, standin, "--port", str(port)], stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_for_server(url, timeout=60, print_note=False)  # not launched by us: any 200 will do
        new = execute_shell_command(f"python {standin} --port {port}", echo=False)
        with pytest.raises(RuntimeError, match="Address already in use"):
            wait_for_server(url, timeout=120, print_note=False)  # `new` found in the registry by port
        terminate_process(new)
    finally:
        terminate_process(old, grace_period=1.0)  # a Popen not launched by sglkit works too
    assert old.returncode == -signal.SIGTERM and is_port_free(port)


# -- launch_server_cmd and ports -------------------------------------------------------------------------------


def test_launch_server_cmd_picks_distinct_ports_and_appends_them(standin):
    first, port1 = launch_server_cmd(f"python {standin}", echo=False)
    second, port2 = launch_server_cmd(f"python {standin} --ready-after 0.5", echo=False)
    try:
        assert port1 != port2
        assert (first.port, second.port) == (port1, port2)
        assert first.argv[-4:] == ["--host", "127.0.0.1", "--port", str(port1)]
        wait_for_server(f"http://127.0.0.1:{port1}", timeout=60, process=first, print_note=False)
        wait_for_server(f"http://127.0.0.1:{port2}", timeout=60, process=second, print_note=False)
        # A port in use is refused up front, naming who holds it.
        with pytest.raises(RuntimeError, match=f"Port {port1}"):
            launch_server_cmd(f"python {standin} --port {port1}", echo=False)
    finally:
        terminate_process(first)
        terminate_process(second)
    assert is_port_free(port1) and is_port_free(port2)


def test_launch_server_cmd_keeps_the_command_port(standin):
    port = _free_port()
    process, returned = launch_server_cmd(f"python {standin} --port={port}", echo=False)
    try:
        assert returned == port == process.port
        assert process.argv.count(f"--port={port}") == 1 and "--port" not in process.argv
        with pytest.raises(ValueError):
            launch_server_cmd(f"python {standin} --port {port}", port=port + 1)
    finally:
        terminate_process(process)


# -- terminate_process -----------------------------------------------------------------------------------------


def test_terminate_process_ends_the_whole_tree_and_frees_the_port(standin):
    process, port = launch_server_cmd(f"python {standin} --spawn-tree --ignore-sigterm", echo=False)
    tail = _wait_for_log(process, "listening on")
    _wait_for_log(process, "stubborn ready")
    sleeper, stubborn, orphan = (int(x) for x in tail.split("TREE ")[1].split()[:3])
    assert orphan not in _tree_pids(process)  # only reachable through the session
    pids = _tree_pids(process) | {orphan}
    assert all(_alive(pid) for pid in pids) and {sleeper, stubborn} <= pids
    assert not is_port_free(port)

    terminate_process(process, grace_period=0.5)
    assert [pid for pid in pids if _alive(pid)] == []
    assert process.returncode == -signal.SIGKILL  # it ignored SIGTERM, so the grace period ran out
    assert is_port_free(port)
    assert process not in registered_processes()
    terminate_process(process)  # idempotent
    terminate_process(process, grace_period=0)


def test_parent_killed_with_sigkill_takes_the_tree_down(tmp_path, standin, isolated_state):
    """kill -9 of the launching interpreter: the parent-death signal ends the server at once, the session
    watchdog ends what the server left behind (a SIGTERM-ignoring child, a grandchild, a double-forked orphan)."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from pathlib import Path\n"
        "import sglkit.process\n"
        f"sglkit.process._state_dir_path = Path({str(isolated_state)!r})\n"
        "from sglkit.utils import launch_server_cmd, tail_log\n"
        "p, port = launch_server_cmd(f'python {sys.argv[1]} --spawn-tree --ignore-sigterm', echo=False)\n"
        "while 'listening on' not in tail_log(p, 50): time.sleep(0.05)\n"
        "tree = tail_log(p, 50).split('TREE ')[1].split()[:3]\n"
        "print(p.pid, *tree, flush=True)\n"
        "time.sleep(600)\n"
    )
    driver_proc = subprocess.Popen(
        [PY, str(driver), standin], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    pids: list[int] = []
    try:
        pids = [int(x) for x in driver_proc.stdout.readline().split()]
        server = psutil.Process(pids[0])
        assert server.ppid() == driver_proc.pid and len(pids) == 4
        os.kill(driver_proc.pid, signal.SIGKILL)
        driver_proc.wait(timeout=30)
        assert psutil.wait_procs([server], timeout=5)[1] == []
        leftovers = [psutil.Process(pid) for pid in pids[1:] if _alive(pid)]
        psutil.wait_procs(leftovers, timeout=15)
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        for pid in [driver_proc.pid, *pids]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        driver_proc.stdout.close()
        driver_proc.wait(timeout=30)


def test_kill_all_servers_ends_registered_and_stale_processes(isolated_state):
    mine = execute_shell_command("python -c 'import time; time.sleep(600)'", echo=False)
    # A server left behind by a dead interpreter (e.g. before a kernel restart): only its pid file remains.
    dead_owner = subprocess.Popen([PY, "-c", "pass"])
    dead_owner.wait()
    stale = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"], start_new_session=True)
    record = {"pid": stale.pid, "create_time": psutil.Process(stale.pid).create_time(), "owner_pid": dead_owner.pid,
              "owner_create_time": 0.0, "argv": [], "port": None, "log_path": None}  # fmt: skip
    (isolated_state / "pids" / f"{stale.pid}.json").write_text(json.dumps(record))
    try:
        pids = kill_all_servers(grace_period=1.0)
        assert set(pids) == {mine.pid, stale.pid}
        assert stale.wait(timeout=30) == -signal.SIGTERM
        assert not _alive(mine.pid) and registered_processes() == []
        assert list((isolated_state / "pids").iterdir()) == []
    finally:
        stale.kill()
        stale.wait()


# -- print_highlight -------------------------------------------------------------------------------------------


def test_print_highlight_prints_plain_text_outside_a_notebook(capsys, monkeypatch):
    print_highlight({"text": "Paris <b>"})
    assert capsys.readouterr().out == "{'text': 'Paris <b>'}\n"
    monkeypatch.setenv("SGLKIT_PLAIN_OUTPUT", "1")
    print_highlight("line 1\nline 2")
    assert capsys.readouterr().out == "line 1\nline 2\n"
