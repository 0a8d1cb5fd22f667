"""One real server (tiny Llama) shared by the widget tests, its sibling checkpoints, and small HTTP helpers."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import requests

from sglkit.utils import terminate_process
from tests.server.conftest import RunningServer, start_server

PROMPT = "The capital of France is"


@pytest.fixture(scope="session")
def widgets_model_path(tiny_model_factory) -> str:
    """The checkpoint the widget server starts with."""
    return tiny_model_factory("LlamaForCausalLM")


@pytest.fixture(scope="session")
def widget_server(widgets_model_path) -> Iterator[RunningServer]:
    """The shared server; tests that change its weights restore the original ones."""
    os.environ.setdefault("SGLKIT_ECHO_LOGS", "0")
    running = start_server(widgets_model_path, "--max-total-tokens 4096")
    yield running
    terminate_process(running.process)


def server_info(base_url: str) -> dict:
    """GET /get_server_info."""
    response = requests.get(f"{base_url}/get_server_info", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def greedy_ids(base_url: str, prompt: str = PROMPT, max_new_tokens: int = 12) -> list[int]:
    """Greedy output ids of ``prompt``."""
    response = requests.post(
        f"{base_url}/generate",
        timeout=60,
        json={"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": max_new_tokens}},
    )
    assert response.status_code == 200, response.text
    return response.json()["output_ids"]


@contextmanager
def long_request(base_url: str, rid: str) -> Iterator[None]:
    """A streamed /generate of 2000 tokens running in the server for the duration of the block (then aborted)."""
    response = requests.post(
        f"{base_url}/generate",
        stream=True,
        timeout=60,
        json={
            "text": "Tell me a very long story",
            "rid": rid,
            "stream": True,
            "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0},
        },
    )
    assert response.status_code == 200
    lines = (line for line in response.iter_lines() if line)
    first = json.loads(next(lines)[len(b"data: ") :])
    assert first["meta_info"]["finish_reason"] is None
    drain = threading.Thread(target=lambda: [None for _ in lines], daemon=True)
    drain.start()  # keep reading so the server never blocks on a full socket
    try:
        yield
    finally:
        requests.post(f"{base_url}/abort_request", json={"rid": rid}, timeout=30)
        drain.join(timeout=60)
        response.close()


@contextmanager
def silent_listener() -> Iterator[str]:
    """A loopback URL whose socket accepts connections but never answers (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (a stopped server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
