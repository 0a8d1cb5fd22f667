"""Models: the pooling a sentence-transformers folder asks for (model folder -> PoolingConfig -> embedding runner).

A sentence-transformers checkpoint lists its pipeline in ``modules.json``: a ``Transformer`` (the HF model in the
folder itself), a ``Pooling`` module whose ``<path>/config.json`` sets one ``pooling_mode_*`` flag, and optionally
``Normalize`` (L2). Folders without ``modules.json`` keep the model's own default pooling. Modules sglkit cannot
reproduce (``Dense``, weighted-mean pooling, several modes at once) are refused with a clear error instead of
serving different vectors than sentence-transformers would. ``sentence_bert_config.json``'s ``max_seq_length``
(where sentence-transformers silently truncates) caps the context, so longer inputs are refused, not truncated.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sglkit.layers.pooler import PoolingConfig, PoolingType

__all__ = ["read_pooling_config", "read_max_seq_length"]

# Pooling config.json flag -> pooling type.
_MODES = {
    "pooling_mode_cls_token": PoolingType.CLS,
    "pooling_mode_mean_tokens": PoolingType.MEAN,
    "pooling_mode_max_tokens": PoolingType.MAX,
    "pooling_mode_mean_sqrt_len_tokens": PoolingType.MEAN_SQRT_LEN,
    "pooling_mode_lasttoken": PoolingType.LAST,
}
_UNSUPPORTED_MODES = ("pooling_mode_weightedmean_tokens",)


def _module_kind(entry: dict) -> str:
    """'sentence_transformers.models.Pooling' -> 'Pooling'."""
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def read_pooling_config(model_path: str | os.PathLike) -> PoolingConfig | None:
    """The folder's sentence-transformers pooling, or None when it has no ``modules.json``.

    Raises ValueError naming the module or flag sglkit does not support.
    """
    root = Path(model_path)
    modules_file = root / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    pooling: PoolingType | None = None
    normalize = False
    for entry in modules:
        kind = _module_kind(entry)
        if kind == "Transformer":
            if entry.get("path", "") not in ("", "."):
                raise ValueError(
                    f"The Transformer module of {str(root)!r} lives in {entry['path']!r}; point --model-path there."
                )
        elif kind == "Pooling":
            pooling = _read_pooling_mode(root / entry.get("path", ""))
        elif kind == "Normalize":
            normalize = True
        else:
            raise ValueError(
                f"sentence-transformers module {entry.get('type')!r} in {modules_file} is not supported."
            )
    if pooling is None:
        raise ValueError(f"{modules_file} has no Pooling module.")
    return PoolingConfig(pooling, normalize)


def _read_pooling_mode(folder: Path) -> PoolingType:
    """The single pooling mode set in ``folder/config.json``."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"Pooling config {config_file} is missing.")
    config = json.loads(config_file.read_text())
    for flag in _UNSUPPORTED_MODES:
        if config.get(flag):
            raise ValueError(f"{flag} in {config_file} is not supported.")
    modes = [kind for flag, kind in _MODES.items() if config.get(flag)]
    if len(modes) != 1:
        raise ValueError(f"{config_file} must set exactly one supported pooling mode; it sets {len(modes)}.")
    return modes[0]


def read_max_seq_length(model_path: str | os.PathLike) -> int | None:
    """``max_seq_length`` of the folder's ``sentence_bert_config.json``, or None when it has none."""
    config_file = Path(model_path) / "sentence_bert_config.json"
    if not config_file.is_file():
        return None
    value = json.loads(config_file.read_text()).get("max_seq_length")
    return value if isinstance(value, int) and value > 0 else None
