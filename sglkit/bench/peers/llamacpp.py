"""Benchmark peer llama.cpp (llama-cpp-python built for this CPU in .bench-peers/llamacpp): GGUF + worker spec.

``ensure_gguf(model_dir, dtype)`` converts the HF folder once with llama.cpp's own converter (outtype bf16 or
f32 per ``dtype``) and caches the file next to the folder (``<folder>.<outtype>.gguf``); ``spec()`` is the worker
that runs the job (workers/llamacpp_worker.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sglkit.bench.peers.runner import WORKERS_DIR, PeerUnavailable, WorkerSpec, peer_venv, worker_env

PEER = "llamacpp"
OUTTYPES = {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}


def gguf_path(model_dir: str | Path, dtype: str) -> Path:
    """Where the GGUF of ``model_dir`` in ``dtype`` is cached: next to the folder."""
    if dtype not in OUTTYPES:
        raise ValueError(
            f"llama.cpp comparison: dtype {dtype!r} has no GGUF outtype; choose {sorted(OUTTYPES)}"
        )
    folder = Path(model_dir).resolve()
    return folder.parent / f"{folder.name}.{OUTTYPES[dtype]}.gguf"


def ensure_gguf(model_dir: str | Path, dtype: str, log=print) -> Path:
    """The cached GGUF of ``model_dir``, converted first if missing or older than the folder's weights."""
    out = gguf_path(model_dir, dtype)
    weights = list(Path(model_dir).glob("*.safetensors"))
    if not weights:
        raise PeerUnavailable(f"llama.cpp: {model_dir} has no safetensors weights to convert to GGUF")
    if out.is_file() and out.stat().st_mtime >= max(w.stat().st_mtime for w in weights):
        return out
    venv = peer_venv(PEER)
    log(f"Converting {model_dir} to {out.name} with llama.cpp's convert_hf_to_gguf.py ...")
    tmp = out.with_suffix(".partial")
    cmd = [
        str(venv / "bin" / "python"),
        "-m",
        "gguf_convert",
        str(venv / "convert"),
        str(model_dir),
        str(tmp),
    ]
    spec = WorkerSpec(name="llama.cpp", python=cmd[0], module="gguf_convert")
    proc = subprocess.run(
        cmd + [OUTTYPES[dtype]], capture_output=True, text=True, env=worker_env(spec, threads=2)
    )
    if proc.returncode != 0 or not tmp.is_file():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise PeerUnavailable(f"llama.cpp: GGUF conversion failed ({proc.returncode}): {tail}")
    tmp.rename(out)
    return out


def spec() -> WorkerSpec:
    """The llama.cpp worker in its side venv (``PeerUnavailable`` if that venv is missing)."""
    python = peer_venv(PEER) / "bin" / "python"
    assert (WORKERS_DIR / "llamacpp_worker.py").is_file()
    return WorkerSpec(name="llama.cpp", python=str(python), module="llamacpp_worker")
