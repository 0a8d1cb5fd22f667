"""Benchmark peers: the model every side loads — a named shape (``one_batch.PRESETS``) with random weights.

``ensure_shape_model("small", write_preset)`` writes, once, an HF Llama folder (config + sglkit's test tokenizer
from ``write_config``, i.e. ``one_batch.write_preset``, which callers pass in so this module does not import the
benchmark that imports it; bf16 safetensors drawn by ``init_dummy_weights`` from a seed) under
``.bench-peers/models/`` and returns it; nothing is downloaded. Every side (sglkit, HF, vLLM, the GGUF for
llama.cpp) then reads the same weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from sglkit.bench.peers.runner import peers_dir

WEIGHTS_FILE = "model.safetensors"


def models_dir() -> Path:
    """``$SGLKIT_BENCH_MODELS_DIR``, else ``.bench-peers/models``."""
    return Path(os.environ.get("SGLKIT_BENCH_MODELS_DIR") or peers_dir() / "models")


def ensure_shape_model(
    shape: str,
    write_config: Callable[[str, Path], Path],
    seed: int = 0,
    root: str | os.PathLike | None = None,
    log=print,
) -> Path:
    """The folder of ``shape`` with random weights (seeded), made on first use; cached by (shape, seed).

    ``write_config(shape, folder)`` writes the shape's config.json and tokenizer (``one_batch.write_preset``).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from sglkit.models.loader import init_dummy_weights

    root = Path(root) if root is not None else models_dir()
    folder = root / f"{shape}-seed{seed}"
    if (folder / WEIGHTS_FILE).is_file() and (folder / "config.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    log(f"Writing the {shape!r} shape with random weights (seed {seed}) to {folder} ...")
    tmp = Path(tempfile.mkdtemp(prefix=f".{shape}-", dir=root))
    try:
        write_config(shape, tmp)
        config = AutoConfig.from_pretrained(tmp)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        init_dummy_weights(model, seed)
        model.save_pretrained(tmp)
        del model
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        folder.chmod(0o755)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
