"""Top-level fields of OpenAI requests (OpenAI routes, before validation): implemented, descriptive, or refused.

No field is dropped without a word. Every field the request model defines is implemented; the fields below are
either *descriptive* (they describe the caller or ask for something that changes nothing here: accepted and
documented) or *unsupported* (refused with a 400 naming them when set to anything but their "off" value); any
other field is answered as OpenAI answers it: 400 "Unrecognized request argument supplied: <name>".
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from sglkit.runtime.frontend.input_processor import InvalidRequestError

DESCRIPTIVE_FIELDS = {
    "user": "an end-user id for the caller's records",
    "metadata": "tags for the caller's records",
    "safety_identifier": "an end-user id for the caller's records",
    "prompt_cache_key": "a cache hint; the radix cache reuses shared prefixes by itself",
    "store": "false only: responses are not stored",
    "service_tier": "'auto' or 'default' only: one tier",
}
"""Accepted fields with no effect (their allowed values are checked by ``_OFF_VALUES``)."""

UNSUPPORTED_FIELDS = {
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "reasoning_effort": "reasoning effort is not supported; use chat_template_kwargs (e.g. enable_thinking)",
    "verbosity": "verbosity is not supported",
    "lora_path": "LoRA adapters are not supported by sglkit",
    "return_hidden_states": "hidden states are not returned by sglkit",
    "session_params": "sessions are not supported by sglkit",
    "priority": "request priorities are not supported by sglkit (its scheduler has no priority policy)",
    "bootstrap_host": "prefill/decode disaggregation is not supported by sglkit",
    "bootstrap_port": "prefill/decode disaggregation is not supported by sglkit",
    "bootstrap_room": "prefill/decode disaggregation is not supported by sglkit",
    "data_parallel_rank": "choosing a data-parallel replica is not supported; the router picks one",
    "routed_dp_rank": "choosing a data-parallel replica is not supported; the router picks one",
    "return_routed_experts": "routed experts are not returned by sglkit",
    "custom_logit_processor": "custom logit processors are not supported by sglkit",
    "custom_params": "custom logit processors are not supported by sglkit",
}
"""Fields SGLang's or OpenAI's request schema defines that sglkit refuses when set (value: the reason)."""

_OFF_VALUES: dict[str, tuple[Any, ...]] = {
    "store": (False,),
    "service_tier": ("auto", "default"),
    "modalities": (["text"],),
    "return_hidden_states": (False,),
    "return_routed_experts": (False,),
    "priority": (0,),
}
_VLLM_HINTS = {
    "guided_json": "response_format (json_schema) or json_schema",
    "guided_regex": "regex",
    "guided_grammar": "ebnf",
    "guided_choice": "regex (an alternation) or ebnf",
    "structured_outputs": "response_format, json_schema, regex or ebnf",
}


def _is_off(name: str, value: Any) -> bool:
    if value is None or value == "" or value == [] or value == {}:
        return True
    return any(value == off and type(value) is type(off) for off in _OFF_VALUES.get(name, ()))


def check_openai_fields(body: dict[str, Any], model: type[BaseModel]) -> None:
    """Raise ``InvalidRequestError`` (400 naming the field) for a refused or unrecognized top-level field."""
    known = model.model_fields
    for name, value in body.items():
        if name in known:
            continue
        if name in DESCRIPTIVE_FIELDS:
            if name in _OFF_VALUES and not _is_off(name, value):
                raise InvalidRequestError(f"{name} must be {DESCRIPTIVE_FIELDS[name]}.", name)
            continue
        if name in UNSUPPORTED_FIELDS:
            if not _is_off(name, value):
                raise InvalidRequestError(f"{name}: {UNSUPPORTED_FIELDS[name]}.", name)
            continue
        hint = _VLLM_HINTS.get(name)
        message = f"Unrecognized request argument supplied: {name}"
        if hint:
            message += f" (a vLLM extension; use {hint})"
        raise InvalidRequestError(message, name)
