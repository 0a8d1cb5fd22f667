"""Launch, last step: end a launched process's tree (descendants + session): SIGTERM, grace, SIGKILL, reap.

Used by ``sglkit.launch.process`` (terminate_process, kill_all_servers, atexit) and ``sglkit.utils``
(wait_for_server: is the port held by our tree?). Knows nothing about the registry;
careful about pid reuse: a pid or session id is only trusted while our child is unreaped or its creation time
still matches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psutil

KILL_WAIT = 5.0  # seconds to wait for SIGKILLed processes to disappear


def create_time_of(pid: int) -> float | None:
    """psutil's creation time of ``pid`` (None if it does not exist or cannot be read)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _is_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class ProcessTree:
    """One process tree to end: a leader (a Popen we can reap, or a bare pid), its descendants, its session."""

    def __init__(
        self, pid: int, popen: subprocess.Popen | None, create_time: float | None, session_id: int | None
    ):
        self.pid, self.popen, self.create_time, self.session_id = pid, popen, create_time, session_id
        self.members: dict[int, psutil.Process] = {}

    @classmethod
    def of_popen(cls, process: subprocess.Popen) -> ProcessTree:
        """The tree of a Popen (session and creation time known while it is unreaped)."""
        create_time = getattr(process, "_sglkit_create_time", None)
        session_id = process.pid if getattr(process, "_sglkit_new_session", False) else None
        if process.returncode is None:  # unreaped: the pid is still ours
            create_time = create_time or create_time_of(process.pid)
            if session_id is None:
                with contextlib.suppress(OSError):
                    session_id = process.pid if os.getsid(process.pid) == process.pid else None
        return cls(process.pid, process, create_time, session_id)

    def _leader(self) -> tuple[psutil.Process | None, bool]:
        """(leader if it is still our process, whether pid/session ids still belong to our tree)."""
        try:
            leader = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return None, True
        if self.popen is not None and self.popen.returncode is None:
            return leader, True
        try:
            same = self.create_time is not None and abs(leader.create_time() - self.create_time) < 0.05
        except psutil.Error:
            return None, True
        return (leader, True) if same else (None, False)

    def scan(self) -> None:
        """Add the leader, its descendants and the members of its session to ``members``."""
        leader, ids_are_ours = self._leader()
        found = [leader] if leader is not None else []
        if leader is not None:
            with contextlib.suppress(psutil.Error):
                found += leader.children(recursive=True)
        if self.session_id is not None and ids_are_ours:
            me = os.getpid()
            for proc in psutil.process_iter():
                if proc.pid in self.members or proc.pid == me:
                    continue
                with contextlib.suppress(OSError):
                    if os.getsid(proc.pid) == self.session_id:
                        found.append(proc)
        for proc in found:
            self.members.setdefault(proc.pid, proc)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process group (while the leader is unreaped) and to every known member."""
        if self.popen is not None and self.popen.returncode is None and self.session_id == self.pid:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, sig)
        for proc in list(self.members.values()):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)

    def alive(self) -> list[psutil.Process]:
        """Members still running (zombies count as gone); reaps the leader when it is our child."""
        if self.popen is not None:
            self.popen.poll()
        out = []
        for pid, proc in self.members.items():
            if self.popen is not None and pid == self.pid:
                if self.popen.returncode is None:
                    out.append(proc)
            elif _is_alive(proc):
                out.append(proc)
        return out

    def listening_ports(self) -> set[tuple[str, int]]:
        """(ip, port) pairs the live members listen on."""
        ports = set()
        for proc in self.alive():
            with contextlib.suppress(psutil.Error, OSError):
                for conn in proc.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN and conn.laddr:
                        ports.add((conn.laddr.ip, conn.laddr.port))
        return ports


def _wait_gone(trees: list[ProcessTree], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(tree.alive() for tree in trees):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def end_process_trees(trees: list[ProcessTree], grace_period: float) -> list[int]:
    """SIGTERM every tree, wait ``grace_period``, SIGKILL what is left (rescanning for late children).

    Returns the pids of survivors (normally empty).
    """
    for tree in trees:
        tree.scan()
    for tree in trees:
        tree.signal(signal.SIGTERM)
        tree.signal(signal.SIGCONT)  # a stopped process only acts on SIGTERM once continued
    _wait_gone(trees, grace_period)
    for _ in range(3):
        for tree in trees:
            tree.scan()
        if not any(tree.alive() for tree in trees):
            break
        for tree in trees:
            tree.signal(signal.SIGKILL)
        _wait_gone(trees, KILL_WAIT)
    return [proc.pid for tree in trees for proc in tree.alive()]
