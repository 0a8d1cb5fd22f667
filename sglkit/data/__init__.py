"""Data files shipped inside the package: the trained demo model (``demo_model/``), the built-in default model.

``demo_model/`` is written by ``scripts/train_demo_model.py`` (see docs/demo_model.md): a ~3M-parameter Llama
chat model with its byte-level BPE tokenizer and ChatML template, in HF format.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_MODEL_DIR", "demo_model_dir"]

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"


def demo_model_dir() -> Path | None:
    """The shipped demo model's folder, or None when it is missing (e.g. a checkout before training)."""
    return DEMO_MODEL_DIR if (DEMO_MODEL_DIR / "config.json").is_file() else None
