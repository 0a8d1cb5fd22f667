"""The built-in default model: what ``make serve`` / ``launch_server`` without ``--model-path`` serve.

It is the trained demo model shipped in ``sglkit/data/demo_model`` (``scripts/train_demo_model.py``,
docs/demo_model.md). Should that folder be missing, a tiny random Llama made by ``sglkit.testing`` is
written once (deterministically, no downloads) into a cache folder and used instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = [
    "DEFAULT_MODEL_NAME",
    "FALLBACK_MODEL_NAME",
    "cache_dir",
    "default_model_name",
    "default_model_path",
]

DEFAULT_MODEL_NAME = "sglkit-demo"  # the shipped demo model's name (e.g. as the served model name)
FALLBACK_MODEL_NAME = "sglkit-tiny-llama"  # cache folder of the random fallback model


def cache_dir() -> Path:
    """Where generated models live (``$SGLKIT_CACHE`` or ~/.cache/sglkit)."""
    return Path(os.environ.get("SGLKIT_CACHE", Path.home() / ".cache" / "sglkit"))


def default_model_name() -> str:
    """The name the built-in default model is served under (``--served-model-name`` when none is given)."""
    from sglkit.data import demo_model_dir

    return DEFAULT_MODEL_NAME if demo_model_dir() is not None else FALLBACK_MODEL_NAME


def default_model_path() -> str:
    """Path of the built-in default model: the shipped demo model, else the generated fallback (made on first use,
    safe if two processes race)."""
    from sglkit.data import demo_model_dir

    shipped = demo_model_dir()
    if shipped is not None:
        return str(shipped)
    path = cache_dir() / FALLBACK_MODEL_NAME
    if not (path / "config.json").is_file():
        from sglkit.testing.tiny_models import make_tiny_model

        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        make_tiny_model(tmp, "LlamaForCausalLM", seed=0)
        try:
            tmp.rename(path)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return str(path)
