"""Runs the Triton attention tests on CPU under Triton's interpreter, in a child pytest process.

``TRITON_INTERPRET=1`` must be set before anything imports triton (Triton's own ``tl.sum``, ``tl.zeros``... are
built for a GPU otherwise and the interpreter fails inside kernels), and in a full test session something else
(transformers, ...) may import triton first. So on a machine without CUDA, the test_triton_*.py files here skip
themselves in this process and this test re-runs them in a fresh interpreter with the variable set from the
start. On a GPU (or when this session already runs interpreted) they run directly and this test skips.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.layers.attention.triton_cases import RUNNABLE

pytest.importorskip("triton")

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
FILES = sorted(
    str(p.relative_to(ROOT)) for p in HERE.glob("test_triton_*.py") if p.name != Path(__file__).name
)


def run_child(marker: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, *FILES]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert "passed" in summary and "skipped" not in summary, summary


@pytest.mark.skipif(RUNNABLE, reason="the Triton tests run directly in this process")
def test_triton_kernels_and_backend_under_the_interpreter():
    run_child("not slow and not gpu")


@pytest.mark.slow
@pytest.mark.skipif(RUNNABLE, reason="the Triton tests run directly in this process")
def test_triton_engine_end_to_end_under_the_interpreter():
    run_child("slow and not gpu")


def test_import_sglkit_and_the_cpu_default_never_import_triton():
    code = (
        "import sys, sglkit\n"
        "from sglkit.layers.attention import create_attention_backend\n"
        "create_attention_backend('auto', 'cpu')\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
