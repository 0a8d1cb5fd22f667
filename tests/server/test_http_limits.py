"""HTTP transport limits over a real server: 431 for oversized headers, slow clients cut off after
--http-read-timeout, quiet logs for clients that leave mid-upload (sglkit/server/http_limits.py, errors.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlparse

import pytest
import requests

from sglkit.server.http_limits import MAX_HEADER_BYTES
from sglkit.utils import terminate_process
from tests.server.conftest import start_server

READ_TIMEOUT = 2.0
SLACK = 2.5  # seconds past the deadline the test tolerates (timer granularity, a loaded 2-core machine)


@pytest.fixture(scope="module")
def limited_server(server_model_path):
    """A server whose clients get READ_TIMEOUT seconds to send headers and between body chunks."""
    running = start_server(
        server_model_path, f"--http-read-timeout {READ_TIMEOUT}", "--max-total-tokens 4096"
    )
    yield running
    terminate_process(running.process)


def connect(base_url: str) -> socket.socket:
    """A raw TCP connection to the server."""
    url = urlparse(base_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    start = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - start


def json_error(raw: bytes) -> tuple[int, dict]:
    """Status and JSON error body of a raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)["error"]


def test_large_header_is_431_json(limited_server):
    resp = requests.get(f"{limited_server.base_url}/get_model_info", headers={"X-Big": "a" * (100 << 10)})
    assert resp.status_code == 431
    error = resp.json()["error"]
    assert error["code"] == 431 and "Request Header Fields Too Large" in error["message"]
    assert str(MAX_HEADER_BYTES) in error["message"]
    small = requests.get(f"{limited_server.base_url}/get_model_info", headers={"X-Ok": "a" * (16 << 10)})
    assert small.status_code == 200


def test_header_section_still_arriving_past_limit_is_431(limited_server):
    """h11 stops buffering an unfinished header section past the limit: JSON 431, not a text 400."""
    sock = connect(limited_server.base_url)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
    try:
        for _ in range(4):
            sock.sendall(b"a" * (MAX_HEADER_BYTES // 2))
            time.sleep(0.05)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed after the answer
    raw, _ = read_until_closed(sock, 10)
    status, error = json_error(raw)
    assert status == 431 and error["code"] == 431


def test_slowloris_headers_cut_off_with_408(limited_server):
    """Headers trickling in (a byte every 0.3 s, so no gap is long) are cut off at the header deadline."""
    sock = connect(limited_server.base_url)
    start = time.monotonic()
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")
    try:
        while time.monotonic() - start < READ_TIMEOUT + SLACK + 2:
            sock.sendall(b"X")
            time.sleep(0.3)
    except (BrokenPipeError, ConnectionResetError):
        pass
    raw, _ = read_until_closed(sock, 5)
    elapsed = time.monotonic() - start
    assert elapsed < READ_TIMEOUT + SLACK + 2.5
    status, error = json_error(raw)
    assert status == 408 and "Request Timeout" in error["message"]


def test_idle_connections_are_closed(limited_server):
    """Connections that never send a byte are closed after the deadline (no answer), all of them."""
    socks = [connect(limited_server.base_url) for _ in range(200)]
    time.sleep(READ_TIMEOUT)
    deadline = time.monotonic() + SLACK + 3
    for sock in socks:
        raw, _ = read_until_closed(sock, max(0.1, deadline - time.monotonic()))
        assert raw == b""
        sock.close()
    assert time.monotonic() < deadline + 0.5
    assert requests.get(f"{limited_server.base_url}/health", timeout=10).status_code == 200


def test_stalled_body_is_disconnected(limited_server):
    sock = connect(limited_server.base_url)
    sock.sendall(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    sock.sendall(b'{"text": "hi"')
    raw, elapsed = read_until_closed(sock, READ_TIMEOUT + SLACK + 5)
    assert raw == b"" and elapsed < READ_TIMEOUT + SLACK
    deadline = time.monotonic() + 10  # the line is written after the close: give the log relay a moment
    while "no request body data within 2 s (--http-read-timeout)" not in limited_server.log():
        assert time.monotonic() < deadline, limited_server.log()[-2000:]
        time.sleep(0.1)


def test_slow_body_that_keeps_arriving_is_served(limited_server):
    """The read timeout is a gap limit: a body sent over 2 x the timeout, a chunk every second, is fine."""
    body = json.dumps({"text": "hello", "sampling_params": {"max_new_tokens": 2}}).encode()
    cuts = [len(body) * i // 5 for i in range(6)]
    pieces = [body[a:b] for a, b in zip(cuts, cuts[1:])]  # 5 pieces, one a second: 5 s > 2 x READ_TIMEOUT
    sock = connect(limited_server.base_url)
    head = f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    sock.sendall(head.encode() + b"Connection: close\r\n\r\n")
    for piece in pieces:
        time.sleep(READ_TIMEOUT / 2)
        sock.sendall(piece)
    raw, _ = read_until_closed(sock, 60)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert b'"meta_info"' in raw


def test_clients_leaving_mid_upload_leave_no_traceback(limited_server):
    """300 clients send headers and part of the body, then hang up: no traceback, the server stays healthy."""
    before = len(limited_server.log())
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 100000\r\n\r\n"

    def client() -> None:
        sock = connect(limited_server.base_url)
        sock.sendall(head + b'{"model": "x", "messages": [' + b" " * 2000)
        time.sleep(0.2)
        sock.close()

    threads = [threading.Thread(target=client) for _ in range(300)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(1.0)
    resp = requests.post(
        f"{limited_server.base_url}/generate",
        json={"text": "hello", "sampling_params": {"max_new_tokens": 2}},
        timeout=60,
    )
    assert resp.status_code == 200
    log = limited_server.log()[before:]
    assert "Traceback" not in log and "Unexpected error" not in log and "Exception in ASGI" not in log
