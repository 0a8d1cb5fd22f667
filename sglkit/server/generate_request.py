"""The /generate body (HTTP edge, before the tokenizer manager): SGLang's ``GenerateReqInput``, field by field.

Every field SGLang's ``GenerateReqInput`` defines is one of:

- **implemented** (the fields of :class:`GenerateReqInput` below, type-checked by pydantic);
- **descriptive**: it only describes the caller (``session_id``, ``conversation_id``, trace context); accepted and
  documented, with no effect on the answer;
- **unsupported** (``UNSUPPORTED_FIELDS``): refused with a 400 naming the field and saying why, *when it is set*.
  ``null``, ``[]``, ``{}``, ``""`` and SGLang's own default value (``false`` for its flags) mean "not set", because
  SGLang's clients send the defaults of fields they do not use.

A field SGLang does not define is a 400 too ("not a field of /generate"), never silently dropped.
``return_text_in_logprobs`` is applied here, on the way out: the text of every logprob entry is filled in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sglkit.runtime.frontend.input_processor import GenerateInput, InvalidRequestError
from sglkit.server.protocol import Bool, Float, Int, parse_json_object, validate_request

_TEXT_ONLY = "sglkit serves text-only models (no image, video or audio inputs)"
_DISAGGREGATION = "prefill/decode disaggregation is not implemented"

# name -> (SGLang's default, why sglkit refuses it when set).
UNSUPPORTED_FIELDS: dict[str, tuple[Any, str]] = {
    **{
        name: (None, _TEXT_ONLY)
        for name in (
            "input_embeds",
            "image_data",
            "video_data",
            "audio_data",
            "mm_hashes",
            "mm_content_hashes",
            "video_config",
            "modalities",
            "max_dynamic_patch",
            "min_dynamic_patch",
            "image_max_dynamic_patch",
            "video_max_dynamic_patch",
            "images_config",
            "mm_processor_kwargs",
            "need_wait_for_mm_inputs",
            "num_items_assigned",
            "encoder_urls",
            "positional_embed_overrides",
        )
    },
    "use_audio_in_video": (False, _TEXT_ONLY),
    **{
        name: (None, _DISAGGREGATION)
        for name in (
            "bootstrap_host",
            "bootstrap_port",
            "bootstrap_room",
            "bootstrap_pair_key",
            "decode_tp_size",
            "disagg_prefill_dp_rank",
        )
    },
    "watermark": (None, "watermarking is not implemented"),
    "return_sampling_mask": (None, "sampling masks are not returned"),
    "sampling_logprobs_mode": (None, "sampling masks are not returned"),
    "return_flat_raw_top_logprobs": (False, "top logprobs are returned as nested lists only"),
    "return_flat_raw_output_top_logprobs": (False, "top logprobs are returned as nested lists only"),
    "return_flat_raw_top_logprobs_b64": (False, "top logprobs are returned as nested lists only"),
    "return_entropy": (False, "entropies are not returned"),
    "return_prompt_token_ids": (False, "prompt token ids are not returned (use /tokenize)"),
    "return_hidden_states": (False, "hidden states are not returned"),
    "return_routed_experts": (False, "MoE routing is not returned"),
    "routed_experts_start_len": (0, "MoE routing is not returned"),
    "return_indexer_topk": (False, "indexer top-k is not returned"),
    "return_bytes": (False, "only text is generated"),
    "log_metrics": (True, "every request is counted in the metrics"),
    "custom_labels": (None, "metrics have no per-request labels"),
    "no_logs": (False, "a request cannot turn off --log-requests"),
    "session_params": (None, "sessions (continual prompting) are not implemented"),
    "lora_path": (None, "LoRA adapters are not supported"),
    "lora_id": (None, "LoRA adapters are not supported"),
    "custom_logit_processor": (None, "custom logit processors are not supported"),
    "routed_dp_rank": (None, "requests cannot pick their data-parallel replica; the router does"),
    "data_parallel_rank": (None, "requests cannot pick their data-parallel replica; the router does"),
    "routing_key": (None, "there is no routing-key scheduling policy"),
    "priority": (None, "there is no priority scheduling"),
    "extra_key": (None, "the prefix cache has no per-request keys"),
    "cache_salt": (None, "the prefix cache has no per-request keys"),
    "kv_hints": (None, "KV hints are not supported"),
    "background": (False, "background requests are not supported"),
    "require_reasoning": (False, "reasoning controls are not supported on /generate"),
    "max_thinking_tokens": (None, "reasoning controls are not supported on /generate"),
    "multi_item_delimiter_indices": (None, "multi-item scoring is not supported"),
    "token_indices_to_pool": (None, "pooling is not supported on /generate (use /encode)"),
    "http_worker_ipc": (None, "it is internal to SGLang"),
}


class GenerateReqInput(BaseModel):
    """Body of /generate: SGLang's GenerateReqInput. Every other field SGLang defines is refused with a 400 when
    set (``null`` and its default mean not set); fields SGLang does not define are refused too.

    Same type rules as the OpenAI routes: no strings or booleans for numbers, only true/false for flags.
    """

    model_config = ConfigDict(
        extra="ignore"
    )  # parse_generate_request refused every unknown or set extra first
    text: str | list[str] | None = None
    input_ids: list[Int] | list[list[Int]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    rid: str | list[str] | None = None
    return_logprob: Bool | list[Bool] | None = False
    logprob_start_len: Int | list[Int] | None = None
    top_logprobs_num: Int | list[Int] | None = None
    token_ids_logprob: list[Int] | list[list[Int]] | None = Field(
        default=None,
        description="With return_logprob: the logprobs of these token ids at every scored position "
        "(meta_info input_token_ids_logprobs / output_token_ids_logprobs); a batch takes one list per input.",
    )
    return_text_in_logprobs: Bool | None = Field(
        default=False, description="Logprob entries carry each token's text: [logprob, token_id, text]."
    )
    stream: Bool | None = False
    # Descriptive: accepted, no effect on the answer.
    session_id: str | None = Field(default=None, description="Describes the caller; no effect.")
    conversation_id: str | None = Field(default=None, description="Describes the caller; no effect.")
    external_trace_header: dict[str, Any] | None = Field(
        default=None, description="Trace context; no effect."
    )
    received_time: Float | None = Field(
        default=None, description="When the caller got the request; no effect."
    )

    def to_generate_input(self) -> GenerateInput:
        """The runtime's GenerateInput (nulls become the defaults)."""
        return GenerateInput(
            text=self.text,
            input_ids=self.input_ids,
            sampling_params=self.sampling_params,
            rid=self.rid,
            return_logprob=False if self.return_logprob is None else self.return_logprob,
            logprob_start_len=self.logprob_start_len,
            top_logprobs_num=self.top_logprobs_num,
            stream=bool(self.stream),
            token_ids_logprob=self.token_ids_logprob or None,
        )


def is_set(value: Any, default: Any) -> bool:
    """True when ``value`` asks for something: not null, not empty, not SGLang's default (a list of such: not set)."""
    if value is None or value == default:
        return False
    if isinstance(value, (list, tuple)):
        return any(is_set(v, default) for v in value)
    return not (isinstance(value, (dict, str)) and not value)


def check_fields(body: dict[str, Any]) -> None:
    """Refuse fields SGLang does not define, and set fields sglkit does not implement (400 naming the field)."""
    known = GenerateReqInput.model_fields
    for name, value in body.items():
        if name in known:
            continue
        if name not in UNSUPPORTED_FIELDS:
            raise InvalidRequestError(f"{name} is not a field of /generate.", name)
        default, reason = UNSUPPORTED_FIELDS[name]
        if is_set(value, default):
            raise InvalidRequestError(f"{name} is not supported: {reason}. Leave it out or send null.", name)


def parse_generate_request(raw: bytes) -> GenerateReqInput:
    """Body bytes -> a checked GenerateReqInput; every refusal is a 400 naming the field."""
    body = parse_json_object(raw)
    check_fields(body)
    return validate_request(GenerateReqInput, body)


# ----------------------------------------------------------------------------- return_text_in_logprobs
_ENTRY_KEYS = ("input_token_logprobs", "output_token_logprobs")
_POSITION_KEYS = (
    "input_top_logprobs",
    "output_top_logprobs",
    "input_token_ids_logprobs",
    "output_token_ids_logprobs",
)


def _with_text(entry: list, decode: Callable[[int], str]) -> list:
    return [entry[0], entry[1], decode(entry[1])]


def add_logprob_texts(meta_info: dict[str, Any], decode: Callable[[int], str]) -> None:
    """Fill the text of every ``[logprob, token_id, None]`` entry of ``meta_info`` in place (``decode``: id -> text,
    special tokens kept, as SGLang's ``return_text_in_logprobs``)."""
    for key in _ENTRY_KEYS:
        if key in meta_info:
            meta_info[key] = [_with_text(e, decode) for e in meta_info[key]]
    for key in _POSITION_KEYS:
        if key in meta_info:
            meta_info[key] = [
                None if row is None else [_with_text(e, decode) for e in row] for row in meta_info[key]
            ]
