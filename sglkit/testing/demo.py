"""The built-in default model: what ``make serve`` / ``launch_server`` without ``--model-path`` serve.

Until a trained demo model ships inside the package, this is a tiny Llama made by ``sglkit.testing``,
written once (deterministically, no downloads) into a cache folder and reused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEFAULT_MODEL_NAME = "sglkit-tiny-llama"


def cache_dir() -> Path:
    """Where generated models live (``$SGLKIT_CACHE`` or ~/.cache/sglkit)."""
    return Path(os.environ.get("SGLKIT_CACHE", Path.home() / ".cache" / "sglkit"))


def default_model_path() -> str:
    """Path of the built-in default model, creating it on first use (safe if two processes race)."""
    path = cache_dir() / DEFAULT_MODEL_NAME
    if not (path / "config.json").is_file():
        from sglkit.testing.tiny_models import make_tiny_model

        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        make_tiny_model(tmp, "LlamaForCausalLM", seed=0)
        try:
            tmp.rename(path)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return str(path)
