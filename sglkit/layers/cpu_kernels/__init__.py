"""Model layers, CPU: sglkit's own C++ kernels (linears / attention -> here -> one extension built for this CPU).

``csrc/`` holds the kernels: ``blocked_gemm.cpp`` (the linears' and logits head's GEMM, ``blocked_gemm.py``),
``decode_attention.cpp`` / ``extend_attention.cpp`` (decode and causal prefill attention straight from the paged
KV pool, ``decode_attention.py`` / ``extend_attention.py``), ``fused_ops.cpp`` (RMSNorm + residual, RoPE,
SiLU-and-mul and the KV write in one pass each, ``fused_ops.py``), ``vec16.h`` (their shared AVX-512 helpers);
``module.cpp`` binds them into one Python extension. It is compiled with ``-march=native`` by
``torch.utils.cpp_extension`` on first use (about a minute, once per machine and torch install:
``python -m sglkit.layers.cpu_kernels`` does it ahead, as ``make install`` does) into
``~/.cache/torch_extensions/sglkit/<name>`` (or under ``$TORCH_EXTENSIONS_DIR``), ``<name>`` hashing the sources,
the flags, the CPU's feature flags and torch's version and location; a process that finds it there imports it
directly (no ninja, no child process).

The kernels need AVX-512 (F/BW/VL); the bfloat16 GEMM also AVX512-BF16. Elsewhere, with
``SGLKIT_CPU_KERNELS=0`` (or the older ``SGLKIT_CPU_GEMM=onednn``), or where the build fails (no compiler, no
ninja; one log line), ``load_kernels`` returns None and the layers keep oneDNN and SDPA.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import platform
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

__all__ = ["REQUIRED_FLAGS", "cpu_flags", "kernels_disabled", "load_kernels", "require_kernels"]

CSRC = Path(__file__).with_name("csrc")
REQUIRED_FLAGS = ("avx512f", "avx512bw", "avx512vl")  # everything; the bf16 GEMM also needs avx512_bf16
DISABLE_ENVS = {"SGLKIT_CPU_KERNELS": ("0", "off", "false"), "SGLKIT_CPU_GEMM": ("onednn", "0", "off")}
# -fopenmp: ATen's parallel_for is inline OpenMP (it runs on torch's libgomp); without it, one thread.
# -ffp-contract=off: a * b - c * d stays two roundings, as in torch (FMAs are written out where wanted)
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"]

_lock = threading.Lock()
_kernels: ModuleType | None = None
_tried = False


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (from /proc/cpuinfo; empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def kernels_disabled() -> bool:
    """Whether the environment turns sglkit's CPU kernels off."""
    return any(os.environ.get(env, "").lower() in values for env, values in DISABLE_ENVS.items())


def _sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


def _hashed_files() -> list[Path]:
    """The sources and the headers they include: a change to any of them builds a new extension."""
    return sorted([*CSRC.glob("*.cpp"), *CSRC.glob("*.h")])


def _extension_name(flags: frozenset[str]) -> str:
    digest = hashlib.sha1()
    for source in _hashed_files():
        digest.update(source.read_bytes())
    digest.update(" ".join(sorted(flags)).encode())
    digest.update(" ".join([*CFLAGS, torch.__version__, str(Path(torch.__file__).parent)]).encode())
    return f"sglkit_cpu_kernels_{digest.hexdigest()[:12]}"


def _build_directory(name: str) -> Path:
    """Where the extension is built: $TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions, then sglkit/<name>."""
    base = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    directory = Path(base) / "sglkit" / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _import_built(name: str, directory: Path) -> ModuleType | None:
    """The already-built extension, imported directly (its name hashes everything it was built from), so a
    process that finds it spawns no ninja; None when it is not there (or does not import)."""
    library = directory / f"{name}.so"
    if not library.is_file():
        return None
    try:
        spec = importlib.util.spec_from_file_location(name, library)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as e:
        logger.debug(f"{library} did not import ({e}); rebuilding.")
        return None
    return module


def _build(flags: frozenset[str]) -> ModuleType:
    from torch.utils import cpp_extension

    name = _extension_name(flags)
    directory = _build_directory(name)
    built = _import_built(name, directory)
    if built is not None:
        return built
    bin_dir = str(Path(sys.executable).parent)  # the venv's ninja, where PATH lacks it
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path if path else bin_dir
    logger.info(f"Compiling sglkit's CPU kernels {name} (once per machine, about a minute)...")
    sources = [str(s) for s in _sources()]
    return cpp_extension.load(
        name, sources, extra_cflags=CFLAGS, build_directory=str(directory), verbose=False
    )


def load_kernels() -> ModuleType | None:
    """The compiled extension, built on first call; None where this CPU or machine cannot run it."""
    global _kernels, _tried
    with _lock:
        if _tried:
            return _kernels
        _tried = True
        if kernels_disabled():
            return None
        flags = cpu_flags()
        if platform.machine() not in ("x86_64", "AMD64") or not all(f in flags for f in REQUIRED_FLAGS):
            return None
        try:
            _kernels = _build(flags)
        except (RuntimeError, OSError, ImportError, ValueError) as e:
            logger.warning(
                f"sglkit's CPU kernels could not be built ({e}); oneDNN and SDPA are used instead."
            )
        return _kernels


def require_kernels(caller: str) -> ModuleType:
    """The compiled extension for ``caller``; RuntimeError where it does not run on this machine."""
    kernels = load_kernels()
    if kernels is None:
        raise RuntimeError(f"{caller}: sglkit's CPU kernels are not available on this machine.")
    return kernels
