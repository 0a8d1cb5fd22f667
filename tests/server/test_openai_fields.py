"""Top-level OpenAI request fields: implemented, descriptive (accepted), unsupported (400 when set), unknown (400)."""

from __future__ import annotations

import pytest

from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.openai_fields import DESCRIPTIVE_FIELDS, UNSUPPORTED_FIELDS, check_openai_fields
from sglkit.server.protocol import ChatCompletionRequest, CompletionRequest

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "extra",
    [
        {"user": "u-1", "metadata": {"k": "v"}, "safety_identifier": "x", "prompt_cache_key": "p"},
        {"store": False, "service_tier": "auto"},
        {"modalities": ["text"], "audio": None, "lora_path": None, "return_hidden_states": False},
        {"reasoning_effort": None, "priority": 0, "custom_params": {}},
    ],
)
def test_descriptive_and_off_fields_are_accepted(extra):
    check_openai_fields({**CHAT, **extra}, ChatCompletionRequest)


@pytest.mark.parametrize(
    "name, value",
    [
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("lora_path", "adapter"),
        ("return_hidden_states", True),
        ("reasoning_effort", "high"),
        ("store", True),
        ("service_tier", "flex"),
        ("priority", 5),
        ("custom_logit_processor", "x"),
    ],
)
def test_set_unsupported_fields_are_400_naming_them(name, value):
    with pytest.raises(InvalidRequestError) as err:
        check_openai_fields({**CHAT, name: value}, ChatCompletionRequest)
    assert err.value.param == name and name in str(err.value)


def test_unknown_fields_get_openais_message():
    with pytest.raises(InvalidRequestError) as err:
        check_openai_fields({"prompt": "x", "temprature": 0.5}, CompletionRequest)
    assert (
        str(err.value) == "Unrecognized request argument supplied: temprature"
        and err.value.param == "temprature"
    )
    with pytest.raises(InvalidRequestError, match="vLLM extension; use regex"):
        check_openai_fields({"prompt": "x", "guided_regex": "a+"}, CompletionRequest)


def test_every_model_field_is_known_and_lists_do_not_overlap():
    for model in (ChatCompletionRequest, CompletionRequest):
        check_openai_fields({name: None for name in model.model_fields}, model)
        assert not set(model.model_fields) & (set(DESCRIPTIVE_FIELDS) | set(UNSUPPORTED_FIELDS))
