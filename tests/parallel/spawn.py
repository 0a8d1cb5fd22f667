"""Run a function on N gloo ranks in spawned processes, with a deadline: ``run_on_ranks(fn, ...)``.

Each rank joins ``initialize_model_parallel(rank, n, tcp://127.0.0.1:<free port>, "gloo")``, calls
``fn(rank, *args)`` (a module-level function, picklable by name) and saves its return value; the parent
returns the values in rank order. A rank that raises fails the call (the others are terminated); past the
deadline every process is killed and TimeoutError is raised. No process outlives the call.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, fn, args: tuple, nprocs: int, port: int, out_dir: str, timeout_s: float) -> None:
    from sglkit.parallel import destroy_model_parallel, initialize_model_parallel

    torch.set_num_threads(1)
    initialize_model_parallel(rank, nprocs, f"tcp://127.0.0.1:{port}", backend="gloo", timeout_s=timeout_s)
    try:
        result = fn(rank, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        destroy_model_parallel()


def run_on_ranks(fn, *args, nprocs: int = 2, timeout_s: float = 60.0) -> list:
    """[fn(0, *args), ..., fn(nprocs - 1, *args)], each run in its own process of an ``nprocs``-rank gloo group."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as out_dir:
        ctx = mp.start_processes(
            _rank_main,
            args=(fn, args, nprocs, free_port(), out_dir, timeout_s),
            nprocs=nprocs,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=0.5):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ranks still running after {timeout_s} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                p.join(timeout=10)
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(nprocs)]
