"""sglkit.launch.process_tree: a tree (leader, descendants, session members) ends with SIGTERM, then SIGKILL."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import psutil

from sglkit.launch.process_tree import ProcessTree, create_time_of, end_process_trees
from tests.launch.conftest import alive

# A leader with one child that ignores SIGTERM; the leader listens on a port and prints "PORT CHILD_PID".
LEADER = r"""
import signal, socket, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE, text=True)
child.stdout.readline()
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print(listener.getsockname()[1], child.pid, flush=True)
time.sleep(600)
"""


def test_end_process_trees_ends_leader_and_a_sigterm_ignoring_child():
    leader = subprocess.Popen(
        [sys.executable, "-c", LEADER], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        port, child = (int(x) for x in leader.stdout.readline().split())
        assert create_time_of(leader.pid) == psutil.Process(leader.pid).create_time()
        tree = ProcessTree.of_popen(leader)
        assert tree.session_id == leader.pid  # started in its own session
        tree.scan()
        assert {leader.pid, child} <= set(tree.members)
        assert ("127.0.0.1", port) in tree.listening_ports()

        assert end_process_trees([tree], grace_period=0.5) == []
        assert leader.returncode == -signal.SIGTERM and not alive(child)
        assert tree.alive() == []
    finally:
        if leader.poll() is None:
            leader.kill()
        leader.stdout.close()
        leader.wait(timeout=30)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # the tree's listening port is free again
