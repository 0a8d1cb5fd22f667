"""Binder replay: a fresh virtualenv set up exactly as Binder does it (``pip install -r binder/requirements.txt``,
then ``binder/postBuild`` from the repository root) executes the quick-start notebook top to bottom.

Binder builds an image with repo2docker: it installs ``binder/requirements.txt`` and runs ``binder/postBuild``.
This test replays those two steps in an empty virtualenv (nothing from the test run's own environment leaks in:
its ``bin`` comes first on PATH, PYTHONPATH is cleared, Jupyter's data and config folders are temporary), then
runs ``jupyter nbconvert --execute`` with that environment's Jupyter and kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "quick_start.ipynb"


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run one set-up step from the repository root; fail with its output's tail."""
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return result


def binder_env(venv: Path, home: Path) -> dict[str, str]:
    """The environment of a Binder session: the virtualenv's bin first, no PYTHONPATH, private Jupyter folders."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JUPYTER_PATH")}
    env.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "VIRTUAL_ENV": str(venv),
            "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
            "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"),
            "IPYTHONDIR": str(home / "ipython"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    return env


def cell_texts(notebook: dict) -> tuple[list[str], list[dict]]:
    """(every text output of every code cell, every error output) of an executed notebook."""
    texts, errors = [], []
    for cell in notebook["cells"]:
        for out in cell.get("outputs", []):
            if out["output_type"] == "error":
                errors.append(out)
            elif out["output_type"] == "stream":
                texts.append(out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
            else:
                for value in out.get("data", {}).values():
                    texts.append(
                        value if isinstance(value, str) else "".join(value) if isinstance(value, list) else ""
                    )
    return texts, errors


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_binder_install_executes_the_quick_start(tmp_path):
    venv = tmp_path / "binder-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = binder_env(venv, tmp_path)
    python = str(venv / "bin" / "python")

    run([python, "-m", "pip", "install", "--quiet", "-r", "binder/requirements.txt"], env, timeout=900)
    run(["bash", "binder/postBuild"], env, timeout=1200)

    # The environment is the one Binder would have: the pinned CPU torch, sglkit from this repository.
    probe = run(
        [python, "-c", "import sglkit, torch; print(torch.__version__); print(sglkit.__file__)"], env, 120
    )
    torch_version, sglkit_file = probe.stdout.split()
    assert torch_version.startswith("2.13.0")
    assert Path(sglkit_file).resolve().is_relative_to(ROOT)

    out_dir = tmp_path / "executed"
    run(
        [
            str(venv / "bin" / "jupyter"),
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            str(NOTEBOOK),
            "--output-dir",
            str(out_dir),
            "--ExecutePreprocessor.timeout=300",
            "--ExecutePreprocessor.kernel_name=python3",
        ],
        env,
        timeout=900,
    )
    executed = json.loads((out_dir / NOTEBOOK.name).read_text())
    texts, errors = cell_texts(executed)
    assert not errors, errors
    joined = "\n".join(texts)
    assert "The capital of France is Paris." in joined  # the greedy answer of the built-in demo model
    assert "1. France: Paris" in joined
