"""The README's 30-second tour runs as written: it launches the built-in model, gets the answer it promises from
the OpenAI client, starts and stops the dashboard, and terminates the server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tour_code() -> str:
    """The first Python block under the README's "A 30-second tour" heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A 30-second tour") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the tour has no python block"
    return match.group(1)


def test_the_tour_runs_as_written(tmp_path):
    code = tour_code()
    assert "launch_server_cmd" in code and "ServerDashboard" in code and "terminate_process" in code
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "The capital of France is Paris." in result.stdout.splitlines()
