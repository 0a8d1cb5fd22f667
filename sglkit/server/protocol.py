"""OpenAI API protocol (HTTP edge): raw body -> validated request models; the response models the routes emit.

Requests: ``parse_json_object`` (bytes -> dict; bad JSON, non-object bodies, invalid UTF-8 and lone surrogates
are 400s) then ``validate_request`` (dict -> model; pydantic errors become a 400 naming the field). Bodies are
parsed whatever the Content-Type, as SGLang did: ``curl -d '{...}'`` sends form-urlencoded and must work.
Types are checked here; ranges are checked once, by ``SamplingParams.verify`` behind the tokenizer manager.
Unknown fields are ignored; null means "default" everywhere. Numbers follow the SamplingParams rules (never
strings or booleans).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from sglkit.runtime.frontend.input_processor import InvalidRequestError

MAX_CHAT_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
_SURROGATE = re.compile("[\ud800-\udfff]")


def _reject_str_and_bool(value: Any) -> Any:
    if isinstance(value, (str, bool)):
        raise ValueError("must be a number, not a string or boolean")
    return value


Int = Annotated[int, BeforeValidator(_reject_str_and_bool)]
"""An integer field: ints and integral floats; never strings or booleans."""
Float = Annotated[float, Field(strict=True)]
"""A float field: ints and floats; never strings or booleans."""
Bool = StrictBool


# ----------------------------------------------------------------------------- body parsing
def _has_surrogate(obj: Any) -> bool:
    """True when any string (value or key) in the parsed JSON holds a lone surrogate."""
    if isinstance(obj, str):
        return (
            not obj.isascii() and _SURROGATE.search(obj) is not None
        )  # isascii is O(1): big prompts cost nothing
    if isinstance(obj, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_surrogate(v) for v in obj)
    return False


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Request body bytes -> a JSON object; ``InvalidRequestError`` (400) for anything else.

    Refuses: empty bodies, invalid UTF-8, malformed or too deeply nested JSON, non-object JSON and strings with
    lone surrogates (``"\\ud800"`` escapes), which would fail later in the tokenizer or the response writer.
    """
    if not raw or not raw.strip():
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRequestError(
            f"The request body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})."
        ) from None
    except RecursionError:
        raise InvalidRequestError("The request body is nested too deeply.") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    try:
        for key, value in body.items():
            if _has_surrogate(key):
                raise InvalidRequestError("A field name contains invalid Unicode (a lone surrogate).")
            if _has_surrogate(value):
                raise InvalidRequestError(f"{key} contains invalid Unicode (a lone surrogate).", key)
    except RecursionError:
        raise InvalidRequestError("The request body is nested too deeply.") from None
    return body


def validate_request(model: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    """dict -> ``model``; raises ``RequestValidationError`` (answered as 400 naming the field, input not echoed)."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_context=False, include_input=False)
        for err in errors:
            err["loc"] = ("body", *err["loc"])
        raise RequestValidationError(errors) from None


# ----------------------------------------------------------------------------- requests
class StreamOptions(BaseModel):
    """``stream_options``: only ``include_usage`` is used."""

    model_config = ConfigDict(extra="ignore")
    include_usage: Bool | None = None


class SamplingRequest(BaseModel):
    """Fields shared by chat and text completions: OpenAI's sampling fields plus SGLang's extras."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: Int | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    n: Int | None = None
    stop: str | list[str] | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    logit_bias: dict[str, Float] | None = None
    seed: Int | None = None
    stream: Bool | None = None
    stream_options: StreamOptions | None = None
    # SGLang extras.
    top_k: Int | None = None
    min_p: Float | None = None
    min_tokens: Int | None = None
    repetition_penalty: Float | None = None
    stop_token_ids: list[Int] | None = None
    ignore_eos: Bool | None = None
    skip_special_tokens: Bool | None = None
    spaces_between_special_tokens: Bool | None = None
    no_stop_trim: Bool | None = None
    stop_regex: str | list[str] | None = None
    rid: str | None = None
    # Constrained decoding (sglkit.server.response_format -> the native grammar sampling params).
    response_format: dict[str, Any] | None = None
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None
    ebnf: str | None = None

    @property
    def include_usage(self) -> bool:
        """True when a stream should end with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    """One part of a message's content list; only ``{"type": "text", "text": ...}`` is supported."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One chat message; content is a string or a list of text parts (None for assistant tool-call turns).

    Assistant turns may carry ``tool_calls`` (OpenAI's shape; JSON-string arguments reach the chat template as
    objects) and ``reasoning_content``; ``tool`` turns carry the ``tool_call_id`` they answer."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


TOOL_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
"""Tool and function names: letters, digits, ``_``, ``.`` and ``-``, at most 64 (OpenAI's rule, plus dots)."""


class FunctionDefinition(BaseModel):
    """A function the model may call: its name, description and JSON-schema ``parameters`` (an object schema)."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: Bool | None = None


class ToolDefinition(BaseModel):
    """One entry of ``tools``: ``{"type": "function", "function": {...}}``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(BaseModel):
    """``{"name": ...}``: the function of a named ``tool_choice`` (or of a legacy ``function_call``)."""

    model_config = ConfigDict(extra="ignore")
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` that forces one function: ``{"type": "function", "function": {"name": ...}}``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["function"] = "function"
    function: FunctionName


class ChatCompletionRequest(SamplingRequest):
    """Body of ``POST /v1/chat/completions``.

    Tools: ``tools`` + ``tool_choice`` (none / auto / required / a named function) + ``parallel_tool_calls``; the
    legacy ``functions`` / ``function_call`` mean the same as tools / tool_choice. Reasoning (with
    ``--reasoning-parser``): ``separate_reasoning``, ``stream_reasoning``. ``continue_final_message`` continues the
    last (assistant) message instead of starting a new turn.
    """

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = None
    logprobs: Bool | None = None
    top_logprobs: Int | None = Field(default=None, ge=0, le=MAX_CHAT_TOP_LOGPROBS)
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: Bool | None = None
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | FunctionName | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    separate_reasoning: Bool = True
    stream_reasoning: Bool = True
    continue_final_message: Bool = False
    add_generation_prompt: Bool | None = None


class CompletionRequest(SamplingRequest):
    """Body of ``POST /v1/completions`` (``max_tokens`` unset or null means OpenAI's default, 16)."""

    prompt: str | list[str] | list[Int] | list[list[Int]]
    echo: Bool | None = None
    logprobs: Int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    suffix: str | None = None
    best_of: Int | None = None


# ----------------------------------------------------------------------------- responses
class UsageInfo(BaseModel):
    """Token counts of one response (prompt counted once per prompt, completions over all choices)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: dict[str, int] | None = None


class ChatMessageOut(BaseModel):
    """The assistant message of a chat choice (``reasoning_content`` only when a reasoning parser produced it,
    so that plain answers keep the seed's shape: role, content, tool_calls)."""

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning_content: str | None = Field(default=None, exclude_if=lambda value: value is None)
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionChoice(BaseModel):
    """One choice of a chat completion."""

    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    matched_stop: int | str | None = None


class ChatCompletionResponse(BaseModel):
    """``chat.completion`` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class ChatCompletionStreamChoice(BaseModel):
    """One choice of a ``chat.completion.chunk``; ``delta`` holds only the fields that changed."""

    index: int
    delta: dict[str, Any]
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    matched_stop: int | str | None = None


class ChatCompletionStreamResponse(BaseModel):
    """``chat.completion.chunk`` object (the usage chunk has no choices)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


class CompletionChoice(BaseModel):
    """One choice of a text completion (also one choice of a streamed chunk, with the new text)."""

    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    matched_stop: int | str | None = None


class CompletionResponse(BaseModel):
    """``text_completion`` object (streamed chunks have the same shape)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    """One entry of ``/v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sglkit"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    """``/v1/models`` answer."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
