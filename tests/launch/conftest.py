"""Shared by the launch tests and tests/test_utils.py: a stand-in server script, per-test state, helpers.

The stand-in is a tiny http.server script run as a real subprocess: /health answers 503 until --ready-after
seconds have passed, then 200; it can crash at start, demand an API key, ignore SIGTERM and spawn a process
tree. Every test ends what it starts and checks with psutil that nothing of the tree is left.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import sglkit.launch.process as process_mod
from sglkit.launch.ports import pick_free_port, unclaim_port
from sglkit.launch.process import kill_all_servers, registered_processes, tail_log

REPO_ROOT = Path(__file__).resolve().parents[2]

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
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('stubborn ready', flush=True); time.sleep(600)"])
    # A double fork: the middle process exits, so the last one leaves the parent/child tree (stays in the session).
    middle = subprocess.Popen([sys.executable, "-c",
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "print(p.pid, flush=True)"],
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


def write_standin(directory: Path) -> str:
    """Write the stand-in server script into ``directory``; returns its path."""
    path = directory / "standin.py"
    path.write_text(STANDIN)
    return str(path)


def isolate_launch_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Fixture body: pid files and logs go to a per-test directory; afterwards nothing may remain registered."""
    state = tmp_path / "sglkit-state"
    for sub in ("logs", "pids"):
        (state / sub).mkdir(parents=True)
    monkeypatch.setattr(process_mod, "_state_dir_path", state)
    kill_all_servers(grace_period=1.0, include_stale=False)  # start clean: judge only what this test leaves
    yield state
    leftover = registered_processes()
    kill_all_servers(grace_period=1.0, include_stale=False)
    assert leftover == [], "a test left processes registered"


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> str:
    """Path of the stand-in server script."""
    return write_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """The per-test launch state directory (see :func:`isolate_launch_state`)."""
    yield from isolate_launch_state(tmp_path, monkeypatch)


def free_port() -> int:
    """A port that is free now and not claimed."""
    port = pick_free_port()
    unclaim_port(port)
    return port


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_log(process: subprocess.Popen, text: str, timeout: float = 30.0) -> str:
    """Wait until ``text`` appears in a launched process's log; returns the log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = tail_log(process, 200)
        if text in tail:
            return tail
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the log:\n{tail_log(process, 200)}")


def tree_pids(process: subprocess.Popen) -> set[int]:
    """``process`` and its descendants (parent/child links only)."""
    return {process.pid} | {c.pid for c in psutil.Process(process.pid).children(recursive=True)}
