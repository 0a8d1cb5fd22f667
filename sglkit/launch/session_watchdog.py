"""Launch, safety net: a helper process ends the launched servers' sessions if their launcher (kernel) dies.

Where it sits: ``sglkit.launch.process`` keeps one :class:`SessionWatchdog` per interpreter, which starts this
file as a script (stdlib + psutil only: it must not import sglkit) and writes ``watch SID CREATE_TIME`` /
``unwatch SID`` lines to its stdin. When stdin reaches end-of-file — the launcher exited, however it died
(kernel SIGKILL, OOM, crash) — it SIGTERMs every process left in the watched sessions, waits a grace period,
SIGKILLs survivors and exits. This covers what the parent-death
signal cannot: grandchildren (a server's scheduler) that outlive a killed server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil

GRACE_PERIOD = 3.0


def _session_members(session_id: int, create_time: float | None) -> list[psutil.Process]:
    """Live processes in session ``session_id`` (none if the id now belongs to a different leader)."""
    try:
        leader = psutil.Process(session_id)
        if create_time is not None and abs(leader.create_time() - create_time) >= 0.05:
            return []  # the pid was reused: not our session any more
    except psutil.Error:
        pass
    members = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == session_id:
                members.append(proc)
        except OSError:
            continue
    return members


def end_sessions(sessions: dict[int, float | None], grace_period: float = GRACE_PERIOD) -> None:
    """SIGTERM all members of ``sessions`` ({session id: leader create time}), then SIGKILL survivors."""
    members = [proc for sid, created in sessions.items() for proc in _session_members(sid, created)]
    for sig in (signal.SIGTERM, signal.SIGCONT):
        for proc in members:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
    _, alive = psutil.wait_procs(members, timeout=grace_period)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_period)


class SessionWatchdog:
    """Launcher side: starts the watchdog process on first use and tells it which sessions to watch."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._sessions: dict[int, float | None] = {}
        self._lock = threading.Lock()

    def watch(self, session_id: int, create_time: float | None) -> None:
        """Have the session led by ``session_id`` ended if this interpreter dies (starts the watchdog)."""
        with self._lock:
            self._sessions[session_id] = create_time
            self._send(f"watch {session_id} {create_time}\n", start=True)

    def unwatch(self, session_id: int) -> None:
        """Stop watching a session (it was terminated normally)."""
        with self._lock:
            if self._sessions.pop(session_id, "missing") != "missing":
                self._send(f"unwatch {session_id}\n", start=False)

    def close(self, timeout: float = 2.0) -> None:
        """Let the watchdog see end-of-file now (it ends whatever is still watched) and wait for it."""
        with self._lock:
            process, self._process = self._process, None
        if process is not None:
            try:
                process.stdin.close()
                process.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                pass

    def _send(self, line: str, *, start: bool) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._process = None  # it died: a new one gets the full list
        if self._process is None:
            if not start:
                return
            try:
                self._process = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C or a killpg aimed at the launcher must not reach it
                    text=True,
                )
            except OSError:
                return
            line = "".join(f"watch {sid} {created}\n" for sid, created in self._sessions.items())
        try:
            self._process.stdin.write(line)
            self._process.stdin.flush()
        except (OSError, ValueError):
            self._process = None


def main() -> None:
    """Read watch/unwatch lines from stdin until end-of-file, then end the watched sessions."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # Ctrl-C or a closed terminal of the launcher must not end us
    sessions: dict[int, float | None] = {}
    for line in sys.stdin:
        parts = line.split()
        try:
            if parts[0] == "watch":
                sessions[int(parts[1])] = float(parts[2]) if len(parts) > 2 and parts[2] != "None" else None
            elif parts[0] == "unwatch":
                sessions.pop(int(parts[1]), None)
        except (IndexError, ValueError):
            continue
    if sessions:
        time.sleep(0.05)  # let processes that die with the launcher go first
        end_sessions(sessions)


if __name__ == "__main__":
    main()
