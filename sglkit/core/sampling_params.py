"""Request -> SamplingParams: parse and validate one request's sampling parameters (SGLang names and defaults).

The HTTP layer calls ``SamplingParams.from_dict(body["sampling_params"])`` (type checks, unknown keys), then the
tokenizer side calls ``verify(vocab_size)`` (range checks) and ``normalize()``. Every failure raises
``SamplingParamError`` whose ``param`` names the offending field; its message starts with that name.

Type rules (decided once, tested): integer fields accept ints and integral floats such as ``16.0`` (JSON clients
often send those); float fields accept ints and floats; booleans are never accepted where a number is expected,
strings are never accepted where a number is expected, and boolean fields accept only ``True``/``False``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

GREEDY_TEMPERATURE_EPS = 1e-6
MAX_N = 128
MAX_STOP_STRS = 32
MAX_STOP_REGEXES = 16
MAX_STOP_REGEX_LEN = 4096
GRAMMAR_FIELDS = ("json_schema", "regex", "ebnf", "structural_tag")
"""The constrained-decoding fields; at most one may be set (SGLang's rule)."""
_SEED_MIN = -(1 << 63)
_SEED_MAX = (1 << 64) - 1


class SamplingParamError(ValueError):
    """An invalid sampling parameter; ``param`` is the field name (the HTTP server answers 400 naming it)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _fail(param: str, what: str, value: Any) -> SamplingParamError:
    return SamplingParamError(param, f"{param} must be {what}, got {value!r}")


def _as_int(param: str, value: Any, what: str = "an integer") -> int:
    """Coerce an int-valued field: ints and integral floats pass; bools, strings and fractions fail."""
    if isinstance(value, bool):
        raise _fail(param, what, value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _fail(param, what, value)


def _as_float(param: str, value: Any, what: str = "a number") -> float:
    """Coerce a float-valued field: ints and floats pass (non-finite values are left to ``verify``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(param, what, value)
    return float(value)


def _as_bool(param: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(param, "a boolean", value)
    return value


def _as_stop(param: str, value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(s, str) for s in value):
        return list(value)
    raise _fail(param, "a string or a list of strings", value)


def _as_int_list(param: str, value: Any) -> list[int]:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise _fail(param, "a list of integers", value)
    return [_as_int(param, v, "a list of integers") for v in value]


def _token_key(param: str, key: Any) -> int:
    """A logit_bias key: an int token id or its decimal string form (OpenAI sends strings)."""
    if isinstance(key, str):
        try:
            return int(key.strip())
        except ValueError:
            raise _fail(param, "a map from token ids to numbers", key) from None
    return _as_int(param, key, "a map from token ids to numbers")


def _as_logit_bias(param: str, value: Any) -> dict[int, float]:
    if not isinstance(value, dict):
        raise _fail(param, "a map from token ids to numbers", value)
    out: dict[int, float] = {}
    for key, bias in value.items():
        token_id = _token_key(param, key)
        if token_id in out:
            raise SamplingParamError(param, f"{param} has token id {token_id} more than once")
        out[token_id] = _as_float(param, bias, "a map from token ids to numbers")
    return out


_INT_FIELDS = ("max_new_tokens", "top_k", "min_new_tokens", "n")
_FLOAT_FIELDS = (
    "temperature",
    "top_p",
    "min_p",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
)
_BOOL_FIELDS = ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim")
_STR_FIELDS = GRAMMAR_FIELDS
_OPTIONAL_FIELDS = (
    "stop",
    "stop_token_ids",
    "stop_regex",
    "logit_bias",
    "sampling_seed",
    "stream_interval",
    *GRAMMAR_FIELDS,
    "beam_width",
    "custom_params",
    "watermark",
)


@dataclass
class SamplingParams:
    """One request's sampling parameters, with SGLang's field names and defaults."""

    max_new_tokens: int = 128
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    n: int = 1
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    logit_bias: dict | None = None
    sampling_seed: int | None = None
    stream_interval: int | None = None
    stop_regex: str | list[str] | None = None
    # Constrained decoding (sglkit.constrained): at most one of these; empty strings mean "not set".
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    # SGLang keys sglkit refuses unless unset (beam_width 1, empty custom_params, no watermark): see verify.
    beam_width: int | None = None
    custom_params: dict | None = None
    watermark: Any = None

    @classmethod
    def from_dict(cls, d: dict | None) -> SamplingParams:
        """Build from a request's ``sampling_params`` dict; ``None`` values mean "default".

        Raises ``SamplingParamError`` for unknown keys and wrongly typed values (ranges are ``verify``'s job).
        """
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise SamplingParamError("sampling_params", f"sampling_params must be an object, got {d!r}")
        known = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in d.items():
            if key not in known:
                raise SamplingParamError(str(key), f"{key} is not a known sampling parameter")
            if value is not None:
                kwargs[key] = _coerce(key, value)
        for key in GRAMMAR_FIELDS:  # an empty grammar means "unset", as in SGLang
            if kwargs.get(key) == "":
                del kwargs[key]
        return cls(**kwargs)

    def _check_types(self) -> None:
        """Re-coerce every field in place (idempotent), so directly constructed objects are checked too."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                if f.name in _OPTIONAL_FIELDS:
                    continue
                raise _fail(f.name, "set", value)
            setattr(self, f.name, _coerce(f.name, value))

    def verify(self, vocab_size: int) -> None:
        """Check SGLang's ranges against a vocabulary of ``vocab_size`` tokens; raise ``SamplingParamError``."""
        self._check_types()
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise _fail("temperature", "a finite number >= 0", self.temperature)
        if not (0 < self.top_p <= 1):
            raise _fail("top_p", "in (0, 1]", self.top_p)
        if not (self.top_k == -1 or self.top_k >= 1):
            raise _fail("top_k", "-1 (disabled) or >= 1", self.top_k)
        if not (0 <= self.min_p <= 1):
            raise _fail("min_p", "in [0, 1]", self.min_p)
        for name in ("frequency_penalty", "presence_penalty"):
            if not (-2 <= getattr(self, name) <= 2):
                raise _fail(name, "in [-2, 2]", getattr(self, name))
        if not (0 < self.repetition_penalty <= 2):
            raise _fail("repetition_penalty", "in (0, 2]", self.repetition_penalty)
        if self.max_new_tokens < 0:
            raise _fail("max_new_tokens", "an integer >= 0", self.max_new_tokens)
        if not (0 <= self.min_new_tokens <= self.max_new_tokens):
            raise _fail(
                "min_new_tokens", f"in [0, max_new_tokens={self.max_new_tokens}]", self.min_new_tokens
            )
        if not (1 <= self.n <= MAX_N):
            raise _fail("n", f"in [1, {MAX_N}]", self.n)
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > MAX_STOP_STRS:
            raise SamplingParamError(
                "stop", f"stop must have at most {MAX_STOP_STRS} strings, got {len(stops)}"
            )
        if any(s == "" for s in stops):
            raise SamplingParamError("stop", "stop must not contain empty strings")
        for token_id in self.stop_token_ids or []:
            if not (0 <= token_id < vocab_size):
                raise _fail("stop_token_ids", f"token ids in [0, {vocab_size})", token_id)
        for token_id, bias in (self.logit_bias or {}).items():
            if not (0 <= token_id < vocab_size):
                raise _fail("logit_bias", f"keyed by token ids in [0, {vocab_size})", token_id)
            if not math.isfinite(bias):
                raise SamplingParamError("logit_bias", f"logit_bias values must be finite, got {bias!r}")
        if self.sampling_seed is not None and not (_SEED_MIN <= self.sampling_seed <= _SEED_MAX):
            raise _fail("sampling_seed", "an integer that fits in 64 bits", self.sampling_seed)
        if self.stream_interval is not None and self.stream_interval < 1:
            raise _fail("stream_interval", "an integer >= 1", self.stream_interval)
        self._verify_stop_regex()
        grammars = [name for name in GRAMMAR_FIELDS if getattr(self, name)]
        if len(grammars) > 1:
            raise SamplingParamError(
                grammars[1], "Only one of json_schema, regex, ebnf, or structural_tag can be set."
            )
        if self.beam_width is not None and self.beam_width != 1:
            raise SamplingParamError("beam_width", "beam_width > 1 (beam search) is not supported by sglkit.")
        if self.custom_params:
            raise SamplingParamError(
                "custom_params",
                "custom_params is not supported: sglkit has no custom logit processors "
                "(SGLang's --enable-custom-logit-processor).",
            )
        if self.watermark is not None:
            raise SamplingParamError("watermark", "watermark is not supported by sglkit.")

    def _verify_stop_regex(self) -> None:
        patterns = self.stop_regexes
        if len(patterns) > MAX_STOP_REGEXES:
            raise SamplingParamError(
                "stop_regex", f"stop_regex must have at most {MAX_STOP_REGEXES} patterns, got {len(patterns)}"
            )
        for pattern in patterns:
            if len(pattern.encode("utf-8")) > MAX_STOP_REGEX_LEN:
                raise SamplingParamError(
                    "stop_regex", f"stop_regex patterns must be at most {MAX_STOP_REGEX_LEN} bytes"
                )
            try:
                compiled = re.compile(pattern)
            except re.error as e:
                raise SamplingParamError(
                    "stop_regex", f"stop_regex {pattern!r} is not a valid regex: {e}"
                ) from None
            if compiled.fullmatch("") is not None:
                raise SamplingParamError("stop_regex", f"stop_regex {pattern!r} matches the empty string")

    def normalize(self) -> None:
        """Canonical forms: ``stop`` becomes a list, ``logit_bias`` keys become ints (idempotent)."""
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        if self.stop_token_ids is not None:
            self.stop_token_ids = [int(t) for t in self.stop_token_ids]
        if self.logit_bias is not None:
            self.logit_bias = _as_logit_bias("logit_bias", self.logit_bias)
        if isinstance(self.stop_regex, str):
            self.stop_regex = [self.stop_regex]

    @property
    def grammar(self) -> tuple[str, str] | None:
        """The constrained-decoding spec as ``(field, value)`` (e.g. ``("regex", "[0-9]+")``), or None."""
        for name in GRAMMAR_FIELDS:
            value = getattr(self, name)
            if value:
                return name, value
        return None

    @property
    def stop_regexes(self) -> list[str]:
        """The stop_regex patterns as a list (whether or not ``normalize`` ran)."""
        if not self.stop_regex:
            return []
        return [self.stop_regex] if isinstance(self.stop_regex, str) else list(self.stop_regex)

    @property
    def is_greedy(self) -> bool:
        """True when sampling reduces to argmax (temperature < 1e-6 or top_k == 1)."""
        return self.temperature < GREEDY_TEMPERATURE_EPS or self.top_k == 1

    @property
    def stop_strs(self) -> list[str]:
        """The stop strings as a list (whether or not ``normalize`` ran)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def max_stop_str_len(self) -> int:
        """Length of the longest stop string (0 if none): how far back a stop search must start."""
        return max((len(s) for s in self.stop_strs), default=0)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain JSON-safe dict (``logit_bias`` keys as strings, like OpenAI)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(out["stop"], list):
            out["stop"] = list(out["stop"])
        if out["stop_token_ids"] is not None:
            out["stop_token_ids"] = list(out["stop_token_ids"])
        if out["logit_bias"] is not None:
            out["logit_bias"] = {str(k): v for k, v in out["logit_bias"].items()}
        if isinstance(out["stop_regex"], list):
            out["stop_regex"] = list(out["stop_regex"])
        return out


def _coerce(name: str, value: Any) -> Any:
    """Type-check and coerce one non-None field value."""
    if name in _INT_FIELDS:
        return _as_int(name, value)
    if name in _FLOAT_FIELDS:
        return _as_float(name, value)
    if name in _BOOL_FIELDS:
        return _as_bool(name, value)
    if name == "stop":
        return _as_stop(name, value)
    if name == "stop_token_ids":
        return _as_int_list(name, value)
    if name == "logit_bias":
        return _as_logit_bias(name, value)
    if name in ("sampling_seed", "stream_interval", "beam_width"):
        return _as_int(name, value)
    if name == "stop_regex":
        return _as_stop(name, value)
    if name in _STR_FIELDS:
        if not isinstance(value, str):
            raise _fail(name, "a string", value)
        return value
    if name == "custom_params":
        if not isinstance(value, dict):
            raise _fail(name, "an object", value)
        return value
    if name == "watermark":
        return value
    raise SamplingParamError(name, f"{name} is not a known sampling parameter")
