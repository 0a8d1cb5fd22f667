"""Registry: architecture names -> sglkit classes, with a clear error for the rest."""

from __future__ import annotations

import pytest

from sglkit.models import get_model_class, supported_architectures
from sglkit.testing import SUPPORTED_ARCHITECTURES


def test_every_tiny_model_architecture_is_registered_or_runs_through_the_fallback():
    """sglkit.testing builds a tiny model of every registered architecture, plus fallback-only families."""
    from sglkit.models.loader import resolve_model_class
    from sglkit.models.transformers_backend import TransformersForCausalLM

    assert set(supported_architectures()) <= set(SUPPORTED_ARCHITECTURES)
    for name in SUPPORTED_ARCHITECTURES:
        if name in supported_architectures():
            assert get_model_class([name]).__name__ == name
        else:
            assert resolve_model_class([name]) is TransformersForCausalLM


def test_first_supported_name_wins():
    assert get_model_class(["SomethingElse", "Qwen2ForCausalLM"]).__name__ == "Qwen2ForCausalLM"


@pytest.mark.parametrize("architectures", [["GPT2LMHeadModel"], [], None])
def test_unsupported_architecture_names_it_and_the_supported_ones(architectures):
    with pytest.raises(ValueError) as err:
        get_model_class(architectures)
    message = str(err.value)
    assert "not supported by sglkit" in message and "LlamaForCausalLM" in message
    if architectures:
        assert "GPT2LMHeadModel" in message
