"""Default sampling parameters from the model's ``generation_config.json`` (front end, before SamplingParams).

With ``--sampling-defaults model`` (the default, as SGLang) a request that leaves ``temperature``, ``top_p``,
``top_k``, ``min_p`` or ``repetition_penalty`` unset gets the value the model's authors put in its
``generation_config.json``; with ``openai`` it gets SGLang's/OpenAI's neutral defaults (temperature 1, no
filtering). Values a request sets always win. Only keys the file states explicitly count (transformers'
``GenerationConfig`` fills in ``top_k=50`` and friends by itself; those are not the authors' choice).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

SAMPLING_DEFAULTS_MODES = ("model", "openai")
"""Values of ``--sampling-defaults``."""
GENERATION_CONFIG_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def _generation_config_path(model_path: str) -> str | None:
    local = os.path.join(model_path, "generation_config.json")
    if os.path.isfile(local):
        return local
    try:
        from transformers.utils import cached_file

        return cached_file(model_path, "generation_config.json", _raise_exceptions_for_missing_entries=False)
    except Exception:  # noqa: BLE001 - no file (or no hub access): no model defaults
        return None


def model_sampling_defaults(model_path: str, mode: str = "model") -> dict[str, Any]:
    """The sampling-param defaults of ``model_path`` for ``mode`` ({} for "openai" or a model without any)."""
    if mode not in SAMPLING_DEFAULTS_MODES:
        raise ValueError(f"sampling_defaults must be one of {SAMPLING_DEFAULTS_MODES}, got {mode!r}.")
    if mode == "openai":
        return {}
    path = _generation_config_path(model_path)
    if path is None:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        logger.warning(f"Ignoring an unreadable generation_config.json ({e}).")
        return {}
    defaults = {}
    for key in GENERATION_CONFIG_KEYS:
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            defaults[key] = value
    if defaults.get("top_k") == 0:  # HF's "disabled" is SGLang's -1
        defaults["top_k"] = -1
    if defaults:
        logger.info(f"Default sampling params from the model's generation_config.json: {defaults}")
    return defaults


def apply_sampling_defaults(params: dict, defaults: dict[str, Any]) -> dict:
    """``params`` with each unset (missing or null) key of ``defaults`` filled in; ``params`` is not modified."""
    if not defaults:
        return params
    merged = dict(params)
    for key, value in defaults.items():
        if merged.get(key) is None:
            merged[key] = value
    return merged
