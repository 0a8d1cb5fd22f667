"""sglkit.launch.session_watchdog: the helper process (started from its file as a script) ends the watched
sessions when its launcher goes, including after a kill -9 of the launching interpreter."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

import sglkit.launch.session_watchdog as session_watchdog
from sglkit.launch.session_watchdog import SessionWatchdog
from tests.launch.conftest import REPO_ROOT, alive

PY = sys.executable

# A session leader with a child; prints the child's pid.
SESSION = (
    "import subprocess, sys, time; "
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print(c.pid, flush=True); time.sleep(600)"
)


def _start_session() -> tuple[subprocess.Popen, int]:
    leader = subprocess.Popen([PY, "-c", SESSION], stdout=subprocess.PIPE, text=True, start_new_session=True)
    return leader, int(leader.stdout.readline())


def test_the_script_imports_only_the_standard_library_and_psutil():
    tree = ast.parse(Path(session_watchdog.__file__).read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    top = {name.split(".")[0] for name in modules}
    assert top - set(sys.stdlib_module_names) == {"psutil"}


def test_closing_the_watchdog_ends_watched_sessions_only():
    watched, watched_child = _start_session()
    spared, spared_child = _start_session()
    watchdog = SessionWatchdog()
    try:
        watchdog.watch(watched.pid, psutil.Process(watched.pid).create_time())
        watchdog.watch(spared.pid, psutil.Process(spared.pid).create_time())
        watchdog.unwatch(spared.pid)
        process = watchdog._process
        assert Path(process.args[1]) == Path(session_watchdog.__file__).resolve()  # run from its file
        watchdog.close(timeout=30)  # end-of-file: as if this interpreter had died
        assert process.returncode == 0
        assert watched.wait(timeout=30) == -signal.SIGTERM
        assert not alive(watched_child)  # the watchdog exits once the members are gone
        assert spared.poll() is None and alive(spared_child)
    finally:
        watchdog.close()
        for leader, child in ((watched, watched_child), (spared, spared_child)):
            for pid in (leader.pid, child):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            leader.stdout.close()
            leader.wait(timeout=30)


def test_parent_killed_with_sigkill_takes_the_tree_down(tmp_path, standin, isolated_state):
    """kill -9 of the launching interpreter: the parent-death signal ends the server at once, the session
    watchdog ends what the server left behind (a SIGTERM-ignoring child, a grandchild, a double-forked orphan)."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO_ROOT)!r})\n"
        "from pathlib import Path\n"
        "import sglkit.launch.process\n"
        f"sglkit.launch.process._state_dir_path = Path({str(isolated_state)!r})\n"
        "from sglkit.launch.ports import pick_free_port\n"
        "from sglkit.launch.process import execute_shell_command, tail_log\n"
        "port = pick_free_port()\n"
        "p = execute_shell_command(f'python {sys.argv[1]} --port {port} --spawn-tree --ignore-sigterm', echo=False)\n"
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
        leftovers = [psutil.Process(pid) for pid in pids[1:] if alive(pid)]
        psutil.wait_procs(leftovers, timeout=15)
        assert [pid for pid in pids if alive(pid)] == []
    finally:
        for pid in [driver_proc.pid, *pids]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        driver_proc.stdout.close()
        driver_proc.wait(timeout=30)
