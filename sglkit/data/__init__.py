"""Data files shipped inside the package: the trained demo model (``demo_model/``), the built-in default model, and
the demo reward model (``demo_reward_model/``).

``demo_model/`` is written by ``scripts/train_demo_model.py`` (see docs/demo_model.md): a ~3M-parameter Llama
chat model with its byte-level BPE tokenizer and ChatML template, in HF format.

``demo_reward_model/`` is written by ``scripts/train_reward_model.py`` (docs/demo_model.md, "The reward model"):
the demo model's decoder fine-tuned as a ``LlamaForSequenceClassification`` with one label, the reward (serve it
with ``--is-embedding``; ``/classify`` returns the scores), with the demo model's tokenizer and template.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_MODEL_DIR", "DEMO_REWARD_MODEL_DIR", "demo_model_dir", "demo_reward_model_dir"]

DEMO_MODEL_DIR = Path(__file__).resolve().parent / "demo_model"
DEMO_REWARD_MODEL_DIR = Path(__file__).resolve().parent / "demo_reward_model"


def demo_model_dir() -> Path | None:
    """The shipped demo model's folder, or None when it is missing (e.g. a checkout before training)."""
    return DEMO_MODEL_DIR if (DEMO_MODEL_DIR / "config.json").is_file() else None


def demo_reward_model_dir() -> Path | None:
    """The shipped demo reward model's folder, or None when it is missing (e.g. a checkout before training)."""
    return DEMO_REWARD_MODEL_DIR if (DEMO_REWARD_MODEL_DIR / "config.json").is_file() else None
