"""The notebook facade sglkit.utils (SGLang's names): wait_for_server, launch_server_cmd, print_highlight,
against the stand-in server of tests/launch/conftest.py. The lifecycle underneath is tested in tests/launch/.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
import requests

from sglkit.launch.ports import is_port_free
from sglkit.utils import (
    execute_shell_command,
    launch_server_cmd,
    print_highlight,
    terminate_process,
    wait_for_server,
)
from tests.launch.conftest import free_port, isolate_launch_state, write_standin

PY = sys.executable


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> str:
    return write_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    yield from isolate_launch_state(tmp_path, monkeypatch)


# -- wait_for_server -------------------------------------------------------------------------------------------


def test_wait_for_server_returns_once_healthy(standin, capsys):
    port = free_port()
    process = execute_shell_command(f"python {standin} --port {port} --ready-after 1.5", echo=False)
    try:
        wait_for_server(f"http://localhost:{port}", timeout=60)  # process found in the registry by port
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert "NOTE: Typically, the server runs in a separate terminal." in capsys.readouterr().out
    finally:
        terminate_process(process)


def test_wait_for_server_raises_at_once_when_the_process_exits(standin):
    port = free_port()
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
        wait_for_server(f"http://127.0.0.1:{free_port()}", timeout=1.0, print_note=False)


def test_wait_for_server_times_out_when_the_server_never_answers():
    with socket.socket() as listener:  # accepts connections (backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(TimeoutError):
            wait_for_server(url, timeout=1.0, request_timeout=30.0, print_note=False)


def test_wait_for_server_api_key(standin):
    port = free_port()
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
    port = free_port()
    process = execute_shell_command(f"python {standin} --port {port}", echo=False)
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        wait_for_server(f"http://127.0.0.1:{port}", timeout=60, process=process, print_note=False)
    finally:
        terminate_process(process)


def test_wait_for_server_does_not_trust_an_old_server_on_the_port(standin):
    port = free_port()
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
    port = free_port()
    process, returned = launch_server_cmd(f"python {standin} --port={port}", echo=False)
    try:
        assert returned == port == process.port
        assert process.argv.count(f"--port={port}") == 1 and "--port" not in process.argv
        with pytest.raises(ValueError):
            launch_server_cmd(f"python {standin} --port {port}", port=port + 1)
    finally:
        terminate_process(process)


# -- print_highlight -------------------------------------------------------------------------------------------


def test_print_highlight_prints_plain_text_outside_a_notebook(capsys, monkeypatch):
    print_highlight({"text": "Paris <b>"})
    assert capsys.readouterr().out == "{'text': 'Paris <b>'}\n"
    monkeypatch.setenv("SGLKIT_PLAIN_OUTPUT", "1")
    print_highlight("line 1\nline 2")
    assert capsys.readouterr().out == "line 1\nline 2\n"
