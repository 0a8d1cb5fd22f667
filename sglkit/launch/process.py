"""Launch hub: notebook cell -> execute_shell_command/spawn -> Popen (+ LogRelay, pid file) -> registry -> end.

Process lifetime for notebook-launched servers: start a command in its own session tied to this interpreter's
life (parent-death signal, session watchdog), relay its log, keep a registry, and end whole process trees
(terminate_process / kill_all_servers / atexit). POSIX only (process groups, sessions).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from sglkit.launch.log_relay import LogRelay
from sglkit.launch.parent_death import die_with_parent, parent_death_supported
from sglkit.launch.ports import unclaim_port, wait_port_free
from sglkit.launch.process_tree import ProcessTree, create_time_of, end_process_trees
from sglkit.launch.session_watchdog import SessionWatchdog

ECHO_LOGS: bool = os.environ.get("SGLKIT_ECHO_LOGS", "1").lower() not in ("0", "false", "no", "off")
"""Default for ``echo=``: relay server output to ``sys.stdout`` (env ``SGLKIT_ECHO_LOGS=0`` turns it off)."""

PARENT_DEATH_SIGNAL: int | None = signal.SIGKILL
"""Signal a launched child receives when this interpreter dies (Linux ``PR_SET_PDEATHSIG``); None disables."""

USE_WATCHDOG: bool = True
"""Start one helper process (``session_watchdog``) that ends launched sessions if this interpreter dies."""

EXIT_GRACE_PERIOD = 2.0  # SIGTERM -> SIGKILL at exit; Jupyter SIGTERMs a kernel 2.5 s into its shutdown
_PORT_FREE_WAIT = 3.0

_ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
_LINE_CONTINUATION = re.compile(r"\\[ \t]*\r?\n")

_registry: dict[int, subprocess.Popen] = {}  # pid -> process, in launch order
_registry_lock = threading.RLock()
_state_dir_path: Path | None = None
_watchdog = SessionWatchdog()


# -- command parsing -------------------------------------------------------------------------------------------


def parse_command(command: str) -> tuple[list[str], dict[str, str]]:
    """Split a shell-like command into ``(argv, env_overrides)``.

    Backslash-newline continuations are joined, the rest is split with :func:`shlex.split` (quotes work), and
    leading ``KEY=VALUE`` tokens become environment variables. ValueError if no command remains.
    """
    tokens = shlex.split(_LINE_CONTINUATION.sub(" ", command))
    env: dict[str, str] = {}
    while tokens and _ENV_ASSIGNMENT.match(tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    if not tokens:
        raise ValueError(f"No command to run in {command!r} (only environment assignments or empty).")
    return tokens, env


def find_option(argv: list[str], name: str) -> str | None:
    """The value of the last ``name VALUE`` or ``name=VALUE`` in ``argv`` (argparse semantics), else None."""
    value = None
    for i, token in enumerate(argv):
        if token == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif token.startswith(name + "="):
            value = token[len(name) + 1 :]
    return value


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


# -- state directory: logs and pid files -----------------------------------------------------------------------


def state_dir() -> Path:
    """Per-user directory (``$TMPDIR/sglkit-<uid>``) holding ``logs/`` and ``pids/`` of launched processes."""
    global _state_dir_path
    if _state_dir_path is None:
        path = Path(tempfile.gettempdir()) / f"sglkit-{os.getuid()}"
        try:
            path.mkdir(mode=0o700, exist_ok=True)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
                raise PermissionError(f"{path} is not a directory owned by this user")
        except OSError:
            path = Path(tempfile.mkdtemp(prefix="sglkit-"))
        for sub in ("logs", "pids"):
            (path / sub).mkdir(exist_ok=True)
        _state_dir_path = path
    return _state_dir_path


def _short_name(argv: list[str]) -> str:
    if "-m" in argv[:-1]:
        name = argv[argv.index("-m") + 1]
    else:
        name = os.path.basename(argv[0])
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60] or "process"


def _new_log_path(argv: list[str]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    fd, path = tempfile.mkstemp(
        prefix=f"{stamp}-{_short_name(argv)}-", suffix=".log", dir=state_dir() / "logs"
    )
    os.close(fd)
    return path


def _write_pidfile(process: subprocess.Popen) -> None:
    record = {
        "pid": process.pid,
        "create_time": process._sglkit_create_time,
        "owner_pid": os.getpid(),
        "owner_create_time": create_time_of(os.getpid()),
        "argv": process.argv,
        "port": process.port,
        "log_path": process.log_path,
    }
    path = state_dir() / "pids" / f"{process.pid}.json"
    with contextlib.suppress(OSError):
        path.write_text(json.dumps(record))


def _remove_pidfile(pid: int) -> None:
    with contextlib.suppress(OSError):
        (state_dir() / "pids" / f"{pid}.json").unlink()


# -- launch ----------------------------------------------------------------------------------------------------


def _parent_death_preexec():
    """A preexec_fn applying :func:`die_with_parent` with PARENT_DEATH_SIGNAL (Linux, main thread only).

    The kernel's "parent" is the creating *thread*, so from another thread the child would die with that
    thread; there we rely on the registry's atexit cleanup instead.
    """
    if PARENT_DEATH_SIGNAL is None or not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread() or not parent_death_supported():
        return None
    sig, parent_pid = int(PARENT_DEATH_SIGNAL), os.getpid()

    def set_parent_death_signal() -> None:
        die_with_parent(sig, parent_pid)

    return set_parent_death_signal


def spawn(
    argv: list[str],
    env_overrides: dict[str, str] | None = None,
    *,
    echo: bool | None = None,
    port: int | None = None,
    host: str | None = None,
    claimed_port: bool = False,
) -> subprocess.Popen:
    """Start ``argv`` in a new session with its output relayed to a log file; register it; return the Popen.

    A bare ``python``/``python3`` is replaced with this interpreter (``sys.executable``), so a notebook kernel's
    environment is used. The Popen gains ``argv``, ``log_path``, ``port`` and ``host`` attributes.
    """
    argv = list(argv)
    if argv[0] in ("python", "python3") and sys.executable:
        argv[0] = sys.executable
    env = dict(os.environ)
    env.update(env_overrides or {})
    env.setdefault("PYTHONUNBUFFERED", "1")  # timely logs, and no lost tail when the child crashes
    log_path = _new_log_path(argv)
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_parent_death_preexec(),
        )
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(log_path)
        raise
    process.argv = argv
    process.log_path = log_path
    process.port = port
    process.host = host
    process._sglkit_new_session = True
    process._sglkit_claimed_port = claimed_port
    process._sglkit_owner_pid = os.getpid()
    process._sglkit_create_time = create_time_of(process.pid)
    with _registry_lock:
        _registry[process.pid] = process
    pipe, process.stdout = (
        process.stdout,
        None,
    )  # the relay owns the pipe; communicate()/wait() leave it alone
    process._sglkit_relay = LogRelay(
        pipe, log_path, echo=ECHO_LOGS if echo is None else echo, name=f"sglkit-{process.pid}"
    ).start()
    _write_pidfile(process)
    if USE_WATCHDOG:
        _watchdog.watch(process.pid, process._sglkit_create_time)
    return process


def execute_shell_command(command: str, *, echo: bool | None = None) -> subprocess.Popen:
    """Run a shell-like command (no shell) in the background, like ``sglang.utils.execute_shell_command``.

    ``command`` may span lines with backslash continuations and start with ``KEY=VALUE`` environment
    assignments; it is split with shlex, so quoted arguments work. The child runs in its own session, dies with
    this interpreter (Linux), and its stdout+stderr go to ``process.log_path`` and, if ``echo`` (default:
    module-level ``ECHO_LOGS``), to ``sys.stdout``. Read the last lines with :func:`tail_log`. A bare
    ``python``/``python3`` runs this interpreter. The process is registered: :func:`terminate_process` ends it,
    and so does interpreter exit.
    """
    argv, env = parse_command(command)
    return spawn(
        argv,
        env,
        echo=echo,
        port=_int_or_none(find_option(argv, "--port")),
        host=find_option(argv, "--host") or "127.0.0.1",
    )


def tail_log(process: subprocess.Popen, n: int = 50) -> str:
    """The last ``n`` lines a launched process printed (empty if it was not launched by sglkit).

    Once the process has exited, waits up to 1 s for its final output to be read.
    """
    relay: LogRelay | None = getattr(process, "_sglkit_relay", None)
    if relay is None:
        return ""
    if process.poll() is not None:
        relay.join(1.0)
    return "\n".join(relay.tail(n))


def registered_processes() -> list[subprocess.Popen]:
    """Processes launched by this module and not yet terminated, oldest first."""
    with _registry_lock:
        return list(_registry.values())


def find_process(port: int) -> subprocess.Popen | None:
    """The newest registered process launched for ``port`` (preferring one still running), else None."""
    candidates = [p for p in registered_processes() if getattr(p, "port", None) == port]
    running = [p for p in candidates if p.poll() is None]
    pool = running or candidates
    return pool[-1] if pool else None


def watch_session(pid: int) -> None:
    """Have the session led by ``pid`` (a process that called ``os.setsid``) ended if this interpreter dies.

    For processes not started by :func:`spawn`, e.g. ``sglkit.Engine``'s tensor-parallel rank processes.
    """
    if USE_WATCHDOG:
        _watchdog.watch(pid, create_time_of(pid))


def unwatch_session(pid: int) -> None:
    """Stop watching a session registered with :func:`watch_session` (its process was stopped normally)."""
    _watchdog.unwatch(pid)


# -- termination -----------------------------------------------------------------------------------------------


def _forget(process: subprocess.Popen) -> None:
    with _registry_lock:
        if _registry.get(process.pid) is process:
            del _registry[process.pid]
    _watchdog.unwatch(process.pid)
    if getattr(process, "_sglkit_owner_pid", None) is not None:
        _remove_pidfile(process.pid)
    if getattr(process, "_sglkit_claimed_port", False):
        unclaim_port(process.port)
        process._sglkit_claimed_port = False


def _terminate(
    processes: list[subprocess.Popen], grace_period: float, extra_trees: Sequence[ProcessTree] = ()
) -> None:
    """End the trees of ``processes`` (and ``extra_trees``) together, then forget the processes."""
    trees = [ProcessTree.of_popen(p) for p in processes] + list(extra_trees)
    for tree in trees:
        tree.scan()
    ports = set().union(*(tree.listening_ports() for tree in trees))
    survivors = end_process_trees(trees, grace_period)
    for process in processes:
        relay = getattr(process, "_sglkit_relay", None)
        if relay is not None:
            relay.join(1.0)  # the log is complete once the pipe closed
        _forget(process)
    deadline = time.monotonic() + _PORT_FREE_WAIT
    for ip, port in sorted(ports):
        wait_port_free(port, ip, timeout=max(0.0, deadline - time.monotonic()))
    if survivors:
        warnings.warn(f"sglkit: processes {survivors} survived SIGKILL (uninterruptible?)", stacklevel=3)


def terminate_process(process: subprocess.Popen | None, grace_period: float = 5.0) -> None:
    """End ``process`` and its whole tree: SIGTERM, up to ``grace_period`` s, then SIGKILL; reap; free its port.

    Covers descendants and everything left in the process's session (also after the process itself died).
    Idempotent: calling it again, or on a process that already exited, is fine. Returns once the port the
    tree listened on is free again (or after a short bounded wait).
    """
    if process is None:
        return
    _terminate([process], grace_period)


def _stale_trees() -> tuple[list[ProcessTree], list[Path]]:
    """Trees recorded in pid files whose owning interpreter is gone (e.g. before a kernel restart)."""
    trees, files = [], []
    mine = {p.pid for p in registered_processes()}
    for path in sorted((state_dir() / "pids").glob("*.json")):
        try:
            record = json.loads(path.read_text())
            pid, owner = int(record["pid"]), int(record["owner_pid"])
        except (OSError, ValueError, KeyError, TypeError):
            files.append(path)
            continue
        if owner == os.getpid() and pid in mine:
            continue
        owner_time = record.get("owner_create_time")
        if owner != os.getpid() and owner_time is not None:
            current = create_time_of(owner)
            if current is not None and abs(current - owner_time) < 0.05:
                continue  # another live interpreter owns it
        trees.append(ProcessTree(pid, None, record.get("create_time"), pid))
        files.append(path)
    return trees, files


def kill_all_servers(grace_period: float = 5.0, include_stale: bool = True) -> list[int]:
    """Terminate every process this module launched (whole trees); returns their pids.

    With ``include_stale``, also ends processes recorded in pid files by interpreters that no longer exist —
    e.g. servers left over from before a kernel restart.
    """
    processes = [p for p in registered_processes() if getattr(p, "_sglkit_owner_pid", None) == os.getpid()]
    trees, files = _stale_trees() if include_stale else ([], [])
    _terminate(processes, grace_period, trees)
    for path in files:
        with contextlib.suppress(OSError):
            path.unlink()
    return [p.pid for p in processes] + [tree.pid for tree in trees]


def _cleanup_at_exit() -> None:
    with contextlib.suppress(Exception):
        kill_all_servers(grace_period=EXIT_GRACE_PERIOD, include_stale=False)
    with contextlib.suppress(Exception):
        _watchdog.close()


atexit.register(_cleanup_at_exit)
