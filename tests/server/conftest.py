"""One real server subprocess (tiny Llama) shared by the API integration tests, plus sibling checkpoints."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from sglkit.utils import launch_server_cmd, terminate_process, wait_for_server


@dataclass
class RunningServer:
    """A launched server: its process, URL, model path and log file."""

    process: object
    base_url: str
    model_path: str

    def log(self) -> str:
        """Everything the server printed so far."""
        return Path(self.process.log_path).read_text(errors="replace")


def start_server(model_path: str, *extra: str, timeout: float = 180) -> RunningServer:
    """Launch ``python -m sglkit.launch_server`` on a free port and wait until it can generate."""
    cmd = f"python -m sglkit.launch_server --model-path {model_path} --decode-log-interval 5 " + " ".join(
        extra
    )
    process, port = launch_server_cmd(cmd, echo=False)
    base_url = f"http://127.0.0.1:{port}"
    api_key = next((extra[i + 1] for i, a in enumerate(extra) if a == "--api-key"), None)
    try:
        wait_for_server(base_url, timeout=timeout, process=process, api_key=api_key, print_note=False)
    except BaseException:
        terminate_process(process)
        raise
    return RunningServer(process, base_url, model_path)


@pytest.fixture(scope="session")
def server_model_path(tiny_model_factory) -> str:
    """The checkpoint the shared server starts with."""
    return tiny_model_factory("LlamaForCausalLM")


@pytest.fixture(scope="session")
def server(server_model_path):
    """The shared server (metrics on). Tests that change weights restore the original ones."""
    os.environ.setdefault("SGLKIT_ECHO_LOGS", "0")
    running = start_server(
        server_model_path, "--enable-metrics", "--log-requests", "--max-total-tokens 16384"
    )
    yield running
    terminate_process(running.process)
