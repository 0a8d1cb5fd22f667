"""Session-wide fixtures: tiny models made once per session by sglkit.testing (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` when CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """make(arch, **kwargs) -> path of a tiny HF-format model, cached per argument set."""
    from sglkit.testing import make_tiny_model

    cache: dict = {}

    def make(architecture: str = "LlamaForCausalLM", **kwargs) -> str:
        key = (architecture, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = architecture + "-" + "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
            cache[key] = str(
                make_tiny_model(tmp_path_factory.mktemp("models") / name, architecture, **kwargs)
            )
        return cache[key]

    return make


@pytest.fixture(scope="session")
def llama_path(tiny_model_factory) -> str:
    """The default tiny Llama."""
    return tiny_model_factory("LlamaForCausalLM")


@pytest.fixture(scope="session")
def same_shape_model_path(tiny_model_factory) -> str:
    """Same architecture and shapes as the tiny Llama, other weights (seed 7): /update_weights succeeds."""
    return tiny_model_factory("LlamaForCausalLM", seed=7)


@pytest.fixture(scope="session")
def other_size_model_path(tiny_model_factory) -> str:
    """Same architecture, wider hidden size: /update_weights fails and rolls back."""
    return tiny_model_factory("LlamaForCausalLM", hidden_size=96, intermediate_size=192)
