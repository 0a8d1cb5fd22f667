"""Benchmark peers, orchestrator side: where each side's Python lives and how one worker run goes.

``run_worker(spec, job)`` starts ``spec.python -m spec.module`` with ``PYTHONPATH`` = the workers folder, writes
the JSON job to its stdin and returns the figures dict it prints (``peer_harness.FIGURES_PREFIX`` line). The
peers' side virtualenvs live under ``.bench-peers/`` (``scripts/prepare_bench_peers.sh`` makes them); a
missing one raises ``PeerUnavailable`` with a one-line message naming that script.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sglkit.bench.peers.workers.peer_harness import EXIT_UNAVAILABLE, FIGURES_PREFIX

WORKERS_DIR = Path(__file__).resolve().parent / "workers"
PREPARE_SCRIPT = "scripts/prepare_bench_peers.sh"
READY_STAMP = ".ready"  # written by the prepare script when a side venv is complete


class PeerUnavailable(RuntimeError):
    """A peer cannot run here; the message is one line meant for the user (no traceback)."""


@dataclass
class WorkerSpec:
    """One side of a comparison: its display name, its Python, its worker module and extra environment."""

    name: str
    python: str
    module: str
    env: dict[str, str] = field(default_factory=dict)


def peers_dir() -> Path:
    """``$SGLKIT_BENCH_PEERS_DIR``, else ``.bench-peers`` of the checkout sglkit runs from, else of the cwd."""
    if os.environ.get("SGLKIT_BENCH_PEERS_DIR"):
        return Path(os.environ["SGLKIT_BENCH_PEERS_DIR"])
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / ".bench-peers").is_dir() or (checkout / PREPARE_SCRIPT).is_file():
        return checkout / ".bench-peers"
    return Path.cwd() / ".bench-peers"


def peer_venv(peer: str) -> Path:
    """The side venv of ``peer`` ("llamacpp" | "vllm"); ``PeerUnavailable`` if it is missing or unfinished."""
    venv = peers_dir() / peer
    if not (venv / "bin" / "python").is_file() or not (venv / READY_STAMP).is_file():
        raise PeerUnavailable(
            f"--compare-{peer}: no side environment at {venv}; prepare it with: bash {PREPARE_SCRIPT} {peer}"
        )
    return venv


def local_spec(name: str, module: str) -> WorkerSpec:
    """A worker run by this interpreter (sglkit itself, HF transformers)."""
    return WorkerSpec(name=name, python=sys.executable, module=module)


def worker_env(spec: WorkerSpec, threads: int) -> dict[str, str]:
    """The worker's environment: ours, PYTHONPATH = the workers folder only, thread counts, ``spec.env``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(WORKERS_DIR), OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(spec.env)
    return env


def parse_figures(stdout: str) -> dict | None:
    """The last figures line of a worker's stdout, or None."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(FIGURES_PREFIX)]
    return json.loads(lines[-1][len(FIGURES_PREFIX) :]) if lines else None


def run_worker(
    spec: WorkerSpec, job: dict, timeout: float | None = None, check_only: bool = False, log=print
) -> dict:
    """Run one worker on ``job``; its figures (a dict with ``error`` when the side failed).

    Raises ``PeerUnavailable`` when the worker says its library is not available (exit code 2).
    """
    cmd = [spec.python, "-m", spec.module] + (["--check"] if check_only else [])
    try:
        proc = subprocess.run(
            cmd,
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=worker_env(spec, job.get("threads", 2)),
        )
    except subprocess.TimeoutExpired:
        return {"peer": spec.name, "error": f"timed out after {timeout:.0f} s"}
    figures = parse_figures(proc.stdout)
    if figures is None:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"peer": spec.name, "error": f"worker exited {proc.returncode} without figures: {tail}"}
    if proc.returncode == EXIT_UNAVAILABLE:
        raise PeerUnavailable(f"{spec.name}: {figures.get('error', 'not available')}")
    if "error" in figures:
        log(f"[{spec.name}] {figures['error']}; its stderr ends with:")
        for line in proc.stderr.strip().splitlines()[-10:]:
            log(f"    {line}")
    return figures
