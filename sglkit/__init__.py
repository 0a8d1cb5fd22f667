"""sglkit: a Jupyter-centric LLM serving kit (own runtime, SGLang native + OpenAI APIs, notebook helpers, widgets).

Heavy modules load lazily so ``import sglkit`` stays light in a notebook.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Engine", "SamplingParams", "ServerArgs", "__version__"]

_LAZY = {
    "Engine": ("sglkit.runtime.engine", "Engine"),
    "SamplingParams": ("sglkit.core.sampling_params", "SamplingParams"),
    "ServerArgs": ("sglkit.server_args", "ServerArgs"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'sglkit' has no attribute {name!r}")
