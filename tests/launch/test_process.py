"""sglkit.launch.process: command parsing, spawn/execute_shell_command, the registry, terminate_process and
kill_all_servers, against real subprocesses (the stand-in server of conftest.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import psutil
import pytest

from sglkit.launch.ports import is_port_free
from sglkit.launch.process import (
    execute_shell_command,
    find_option,
    find_process,
    kill_all_servers,
    parse_command,
    registered_processes,
    tail_log,
    terminate_process,
)
from tests.launch.conftest import alive, free_port, tree_pids, wait_for_log

PY = sys.executable


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
    assert find_option(argv, "--port") == "30010" and find_option(argv, "--chat-template") == "{{ x }}"
    assert find_option(argv, "--host") is None


@pytest.mark.parametrize("command", ["", "   \n", "A=1", "A=1 B='two words'"])
def test_parse_command_without_a_program_raises(command):
    with pytest.raises(ValueError):
        parse_command(command)


# -- launch ----------------------------------------------------------------------------------------------------


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


def test_the_registry_finds_a_process_by_its_port(standin):
    port = free_port()
    process = execute_shell_command(f"python {standin} --port {port}", echo=False)
    try:
        assert (process.port, process.host) == (port, "127.0.0.1")
        assert process in registered_processes() and find_process(port) is process
    finally:
        terminate_process(process)
    assert process not in registered_processes()


# -- terminate_process and kill_all_servers --------------------------------------------------------------------


def test_terminate_process_ends_the_whole_tree_and_frees_the_port(standin):
    port = free_port()
    process = execute_shell_command(
        f"python {standin} --port {port} --spawn-tree --ignore-sigterm", echo=False
    )
    tail = wait_for_log(process, "listening on")
    wait_for_log(process, "stubborn ready")
    sleeper, stubborn, orphan = (int(x) for x in tail.split("TREE ")[1].split()[:3])
    assert orphan not in tree_pids(process)  # only reachable through the session
    pids = tree_pids(process) | {orphan}
    assert all(alive(pid) for pid in pids) and {sleeper, stubborn} <= pids
    assert not is_port_free(port)

    terminate_process(process, grace_period=0.5)
    assert [pid for pid in pids if alive(pid)] == []
    assert process.returncode == -signal.SIGKILL  # it ignored SIGTERM, so the grace period ran out
    assert is_port_free(port)
    assert process not in registered_processes()
    terminate_process(process)  # idempotent
    terminate_process(process, grace_period=0)


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
        assert not alive(mine.pid) and registered_processes() == []
        assert list((isolated_state / "pids").iterdir()) == []
    finally:
        stale.kill()
        stale.wait()
