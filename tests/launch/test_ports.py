"""sglkit.launch.ports: free-port checks, who holds a port, claims, and SGLang's reserve_port / release_port."""

from __future__ import annotations

import errno
import os
import socket
import threading

import pytest

from sglkit.launch.ports import (
    DEFAULT_PORT_RANGE,
    claim_port,
    is_port_free,
    pick_free_port,
    port_bind_error,
    port_holder,
    release_port,
    reserve_port,
    unclaim_port,
    wait_port_free,
)


def test_a_listening_port_is_busy_and_its_holder_is_named():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not is_port_free(port)
        assert port_bind_error(port, "127.0.0.1").errno == errno.EADDRINUSE
        assert port_holder(port).startswith(f"pid {os.getpid()}")
        assert not wait_port_free(port, timeout=0.1)
        threading.Timer(0.2, listener.close).start()
        assert wait_port_free(port, timeout=10.0)  # returns once the listener is gone
    assert is_port_free(port) and port_bind_error(port, "127.0.0.1") is None and port_holder(port) is None


def test_a_picked_port_is_claimed_until_unclaimed():
    port = pick_free_port()
    try:
        assert DEFAULT_PORT_RANGE[0] <= port < DEFAULT_PORT_RANGE[1]
        with pytest.raises(RuntimeError, match=f"Port {port} is already used by a server launched"):
            claim_port(port)
        with pytest.raises(RuntimeError, match="No free port"):
            pick_free_port(start=port, end=port + 1)  # the only candidate is claimed
    finally:
        unclaim_port(port)
    claim_port(port)
    unclaim_port(port)
    unclaim_port(None)  # no-op


def test_reserve_port_holds_a_claim_that_a_server_can_still_bind():
    port, lock_socket = reserve_port("127.0.0.1")
    try:
        assert DEFAULT_PORT_RANGE[0] <= port < DEFAULT_PORT_RANGE[1]
        assert lock_socket.getsockname() == ("127.0.0.1", port)
        with pytest.raises(RuntimeError, match="already used"):
            claim_port(port)  # never handed to a second launch
        with socket.socket() as server:  # like uvicorn: SO_REUSEADDR, bind, listen
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", port))
            server.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                pass
    finally:
        release_port(lock_socket)
    assert lock_socket.fileno() == -1
    claim_port(port)  # the claim was dropped
    unclaim_port(port)
    release_port(lock_socket)  # a second release is harmless
