"""Notebook helpers with SGLang's names (``sglang.utils``): launch a server, wait until it can generate, end it.

Where it sits: a notebook cell -> these helpers -> ``python -m sglkit.launch_server`` as a child process. A
notebook written for SGLang ports by changing its import::

    from sglkit.utils import launch_server_cmd, wait_for_server, terminate_process, print_highlight

    server_process, port = launch_server_cmd("python -m sglkit.launch_server --model-path PATH")
    wait_for_server(f"http://127.0.0.1:{port}", process=server_process)
    ...
    terminate_process(server_process)

Unlike SGLang's, these never hang (every wait has a deadline and notices a dead server at once) and never
leak a process (own session, parent-death signal, whole-tree termination, atexit cleanup). The lifecycle
itself lives in :mod:`sglkit.launch`; this module keeps SGLang's names and re-exports the rest from there.
"""

from __future__ import annotations

import html
import ipaddress
import os
import subprocess
import sys
import time
import urllib.parse

import psutil
import requests

from sglkit.launch.ports import (
    claim_port,
    is_port_free,
    pick_free_port,
    port_holder,
    release_port,
    reserve_port,
    unclaim_port,
)
from sglkit.launch.process import (
    execute_shell_command,
    find_option,
    find_process,
    kill_all_servers,
    parse_command,
    registered_processes,
    spawn,
    tail_log,
    terminate_process,
)
from sglkit.launch.process_tree import ProcessTree

__all__ = [
    "execute_shell_command",
    "find_process",
    "kill_all_servers",
    "launch_server_cmd",
    "print_highlight",
    "registered_processes",
    "release_port",
    "reserve_port",
    "tail_log",
    "terminate_process",
    "wait_for_server",
]

NOTE_TEXT = (
    "NOTE: Typically, the server runs in a separate terminal.\n"
    "In this notebook, we run the server and notebook code together, so their outputs are combined.\n"
    "To improve clarity, the server logs are displayed in the original black color, "
    "while the notebook outputs are highlighted in blue."
)

_LOG_TAIL_LINES = 30


def launch_server_cmd(
    command: str, host: str = "127.0.0.1", port: int | None = None, *, echo: bool | None = None
) -> tuple[subprocess.Popen, int]:
    """Launch a server command in the background; returns ``(process, port)`` like SGLang's.

    Appends ``--host host`` and ``--port port`` unless the command already has them. With ``port=None`` a free
    port in 30000-40000 is picked; a port is never handed to two servers launched from this interpreter. A port
    already in use raises RuntimeError naming the holder (often a server you forgot to terminate).
    ``process.port`` records the port; ``echo`` as in :func:`execute_shell_command`.
    """
    argv, env = parse_command(command)
    command_port, command_host = find_option(argv, "--port"), find_option(argv, "--host")
    if command_port is not None:
        if port is not None and int(command_port) != port:
            raise ValueError(f"port={port} conflicts with --port {command_port} in the command.")
        port = int(command_port)
    host = command_host or host
    if port is None:
        port = pick_free_port(host)
    else:
        claim_port(port)
        if not is_port_free(port, host):
            unclaim_port(port)
            holder = port_holder(port)
            raise RuntimeError(
                f"Port {port} is already in use{f' by {holder}' if holder else ''}. Terminate that server "
                "(terminate_process / kill_all_servers) or launch with port=None to pick a free port."
            )
    extra = [] if command_host is not None else ["--host", host]
    if command_port is None:
        extra += ["--port", str(port)]
    try:
        process = spawn(argv + extra, env, echo=echo, port=port, host=host, claimed_port=True)
    except BaseException:
        unclaim_port(port)
        raise
    return process, port


def _port_of(base_url: str) -> int | None:
    parsed = urllib.parse.urlsplit(base_url)
    try:
        return parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    except ValueError:
        return None


def _is_local(base_url: str) -> bool:
    host = urllib.parse.urlsplit(base_url).hostname or ""
    if host in ("localhost", "0.0.0.0", "::"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.endswith(".localhost")


def _foreign_listener(process: subprocess.Popen, port: int | None) -> str | None:
    """Who answers on ``port`` if it is visibly *not* ``process``'s tree (an old server), else None."""
    if port is None:
        return None
    try:
        listeners = {
            c.pid
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
        }
    except (psutil.Error, OSError):
        return None
    if not listeners:
        return None  # not visible to us: assume it is ours
    tree = ProcessTree.of_popen(process)
    tree.scan()
    if listeners & set(tree.members):
        return None
    return port_holder(port) or f"pid {min(listeners)}"


def _log_tail_text(process: subprocess.Popen | None) -> str:
    if process is None:
        return ""
    tail = tail_log(process, _LOG_TAIL_LINES)
    where = getattr(process, "log_path", None)
    header = f"\n--- last lines of the server log{f' ({where})' if where else ''} ---\n"
    return header + tail if tail else ""


def _exited_error(process: subprocess.Popen, base_url: str) -> RuntimeError:
    return RuntimeError(
        f"Server process (pid {process.pid}) for {base_url} exited with code {process.returncode} "
        f"before it was ready.{_log_tail_text(process)}"
    )


def _auth_error(url: str, status: int, api_key: str | None) -> PermissionError:
    if api_key is None:
        hint = "the server requires an API key: pass api_key=... (the value given to --api-key)."
    else:
        hint = "the API key was rejected: check that api_key matches the server's --api-key."
    return PermissionError(f"GET {url} returned HTTP {status}: {hint}")


def wait_for_server(
    base_url: str,
    timeout: float | None = 300,
    process: subprocess.Popen | None = None,
    api_key: str | None = None,
    *,
    request_timeout: float = 5.0,
    poll_interval: float = 0.5,
    print_note: bool = True,
) -> None:
    """Block until ``{base_url}/health`` answers 200, i.e. the server finished its warmup and can generate.

    - ``process``: the server's Popen; if it exits, RuntimeError at once with the tail of its log. If None,
      the process launched by these helpers for the URL's port is used, if any.
    - ``timeout`` (s, None = no limit) holds on every path: refused connections, slow answers (each request
      has ``request_timeout``), 503 "still starting". TimeoutError (with the log tail) when it runs out.
    - ``api_key`` is sent as ``Authorization: Bearer``; if None, a ``--api-key`` in the process's command is
      used. HTTP 401/403 raises PermissionError at once. Proxy environment variables are ignored for
      loopback URLs. A 200 from another process holding the port (an old server) does not count.
    - On success prints a short highlighted NOTE (``print_note=False`` to skip).
    """
    base_url = base_url.rstrip("/")
    url = f"{base_url}/health"
    if process is None:
        port = _port_of(base_url)
        process = find_process(port) if port is not None else None
    if api_key is None and process is not None:
        api_key = find_option(getattr(process, "argv", []) or [], "--api-key")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = None if timeout is None else time.monotonic() + timeout
    last_outcome = "no attempt"
    with requests.Session() as session:
        session.trust_env = not _is_local(base_url)  # HTTP(S)_PROXY must not capture loopback requests
        while True:
            if process is not None and process.poll() is not None:
                raise _exited_error(process, base_url)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"Server at {base_url} was not ready within {timeout} s (last: {last_outcome})."
                    f"{_log_tail_text(process)}"
                )
            per_request = request_timeout if remaining is None else max(0.05, min(request_timeout, remaining))
            try:
                response = session.get(url, headers=headers, timeout=per_request)
                if response.status_code == 200:
                    other = _foreign_listener(process, _port_of(base_url)) if process is not None else None
                    if other is None:
                        break
                    last_outcome = f"HTTP 200 from {other}, another server holding the port"
                elif response.status_code in (401, 403):
                    raise _auth_error(url, response.status_code, api_key)
                else:
                    last_outcome = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                last_outcome = type(exc).__name__
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(poll_interval, deadline - time.monotonic()))
            if process is not None:
                try:
                    process.wait(timeout=pause)  # wakes up as soon as the server dies
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(pause)
    if print_note:
        print_highlight(NOTE_TEXT)


def _in_notebook() -> bool:
    if os.environ.get("SGLKIT_PLAIN_OUTPUT", "").lower() in ("1", "true", "yes", "on"):
        return False
    if "IPython" not in sys.modules:  # never import IPython ourselves: keeps plain scripts light
        return False
    try:
        shell = sys.modules["IPython"].get_ipython()
    except Exception:  # noqa: BLE001 - a half-initialised or stubbed IPython just means "not a notebook"
        return False
    return getattr(shell, "kernel", None) is not None  # a Jupyter kernel, not the terminal IPython


def print_highlight(obj: object) -> None:
    """Show ``obj`` highlighted (bold dark blue HTML) in a Jupyter kernel, else ``print`` it.

    Set ``SGLKIT_PLAIN_OUTPUT=1`` to force plain text.
    """
    text = str(obj)
    if _in_notebook():
        from IPython.display import HTML, display

        body = html.escape(text).replace("\n", "<br>")
        display(HTML(f"<strong style='color: #00008B;'>{body}</strong>"))
    else:
        print(text)
