"""Launch, around a server: pick/claim a free port before the launch, name who holds one, wait until it is free.

Used by ``launch_server_cmd`` (pick/claim before launch), ``terminate_process`` (release, wait until the
port is bindable again) and the server's own start-up check (``sglkit.server.http_server``). A claimed port
is never handed to a second server launched from the same interpreter, even before the first server has bound
it. We do not hold a bound socket during launch, so the server can bind the port whatever socket options it
uses. ``reserve_port`` / ``release_port`` exist for SGLang compatibility (``sglang.utils`` has them).
"""

from __future__ import annotations

import errno
import random
import socket
import threading
import time

import psutil

DEFAULT_PORT_RANGE = (30000, 40000)  # same range as SGLang's reserve_port

_claimed_ports: set[int] = set()
_lock = threading.Lock()


def _bind_family(host: str) -> tuple[socket.AddressFamily, str]:
    if host in ("", "0.0.0.0", "*"):
        return socket.AF_INET, ""
    if host == "::" or ":" in host:
        return socket.AF_INET6, host
    return socket.AF_INET, host


def _bind_error(port: int, host: str, *, reuse_address: bool) -> OSError | None:
    family, bind_host = _bind_family(host)
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if reuse_address:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind_host, port))
        except OSError as exc:
            return exc
    return None


def _can_bind(port: int, host: str, *, reuse_address: bool) -> bool:
    error = _bind_error(port, host, reuse_address=reuse_address)
    # Other errors (e.g. EADDRNOTAVAIL: not a local address) are for the server to report itself.
    return error is None or error.errno not in (errno.EADDRINUSE, errno.EACCES)


def port_bind_error(port: int, host: str = "127.0.0.1") -> OSError | None:
    """The OSError binding ``host:port`` raises as a server binds it (SO_REUSEADDR), or None if it binds.

    The server's start-up check uses it to fail fast, before loading a model, with the reason in its message.
    """
    return _bind_error(port, host, reuse_address=True)


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (sockets lingering in TIME_WAIT do not count)."""
    return _can_bind(port, host, reuse_address=True)


def port_holder(port: int) -> str | None:
    """A short description (``"pid 123 (python)"``) of the local process listening on ``port``, if visible."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            try:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return None


def claim_port(port: int) -> None:
    """Mark ``port`` as taken by a server launched from this interpreter; RuntimeError if already claimed."""
    with _lock:
        if port in _claimed_ports:
            raise RuntimeError(
                f"Port {port} is already used by a server launched from this Python process; "
                "call terminate_process() on it first, or pick another port."
            )
        _claimed_ports.add(port)


def unclaim_port(port: int | None) -> None:
    """Forget a claim made with :func:`claim_port` or :func:`pick_free_port` (no-op if not claimed)."""
    with _lock:
        _claimed_ports.discard(port)


def pick_free_port(
    host: str = "127.0.0.1", start: int = DEFAULT_PORT_RANGE[0], end: int = DEFAULT_PORT_RANGE[1]
) -> int:
    """Claim and return a random port in ``[start, end)`` that is bindable on ``host`` and not claimed here."""
    candidates = list(range(start, end))
    random.shuffle(candidates)
    for port in candidates:
        with _lock:
            if port in _claimed_ports:
                continue
            if _can_bind(port, host, reuse_address=False):  # strict: skip TIME_WAIT ports too
                _claimed_ports.add(port)
                return port
    raise RuntimeError("No free port available.")


def wait_port_free(port: int, host: str = "127.0.0.1", timeout: float = 3.0) -> bool:
    """Poll until nothing listens on ``host:port`` or ``timeout`` s pass; True if free."""
    deadline = time.monotonic() + timeout
    while not is_port_free(port, host):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def reserve_port(
    host: str = "127.0.0.1", start: int = DEFAULT_PORT_RANGE[0], end: int = DEFAULT_PORT_RANGE[1]
) -> tuple[int, socket.socket]:
    """SGLang-compatible: claim a free port and return it with a bound (SO_REUSEADDR, not listening) socket.

    A server that sets SO_REUSEADDR (uvicorn does) can still bind the port. Hand the socket back with
    :func:`release_port`.
    """
    port = pick_free_port(host, start, end)
    family, bind_host = _bind_family(host)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind_host, port))
    except OSError:
        sock.close()
        unclaim_port(port)
        raise
    return port, sock


def release_port(lock_socket: socket.socket) -> None:
    """SGLang-compatible: close a socket from :func:`reserve_port` and drop its claim (errors are ignored)."""
    try:
        port = lock_socket.getsockname()[1]
    except OSError:
        port = None
    try:
        lock_socket.close()
    except OSError:
        pass
    unclaim_port(port)
