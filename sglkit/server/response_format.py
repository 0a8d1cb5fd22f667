"""OpenAI ``response_format`` and SGLang's grammar extras -> native grammar sampling params (OpenAI routes -> here).

``{"type": "text"}`` constrains nothing; ``{"type": "json_object"}`` becomes the JSON schema ``{"type": "object"}``
(any JSON object, as SGLang does); ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` becomes
``json_schema`` (the schema is always enforced: ``strict`` false does not loosen it); SGLang's ``{"type":
"structural_tag", ...}`` becomes ``structural_tag``. The request-level extras ``regex``, ``ebnf`` and ``json_schema``
(a string or an object) pass through. Grammars themselves are validated later, with the other sampling params.
"""

from __future__ import annotations

import json
from typing import Any

from sglkit.runtime.frontend.input_processor import InvalidRequestError

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema", "structural_tag")


def _schema_of(fmt: dict[str, Any]) -> str:
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequestError(
            "response_format of type 'json_schema' needs a json_schema object with a schema.",
            "response_format",
        )
    schema = spec.get("schema", spec.get("schema_"))
    if schema is None:
        raise InvalidRequestError("response_format.json_schema.schema is required.", "response_format")
    if not isinstance(schema, dict):
        raise InvalidRequestError("response_format.json_schema.schema must be an object.", "response_format")
    return json.dumps(schema)


def response_format_grammar(fmt: dict[str, Any] | None) -> dict[str, str]:
    """A ``response_format`` -> ``{grammar field: value}`` (empty for none or text); 400 for anything else."""
    if fmt is None:
        return {}
    kind = fmt.get("type", "text")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"json_schema": json.dumps({"type": "object"})}
    if kind == "json_schema":
        return {"json_schema": _schema_of(fmt)}
    if kind == "structural_tag":
        return {"structural_tag": json.dumps(fmt)}
    raise InvalidRequestError(
        f"response_format type {kind!r} is not supported; use one of {', '.join(RESPONSE_FORMAT_TYPES)}.",
        "response_format",
    )


def extra_grammar(regex: str | None, ebnf: str | None, json_schema: str | dict | None) -> dict[str, str]:
    """SGLang's request-level ``regex`` / ``ebnf`` / ``json_schema`` extras as grammar sampling params."""
    out: dict[str, str] = {}
    if regex is not None:
        out["regex"] = regex
    if ebnf is not None:
        out["ebnf"] = ebnf
    if json_schema is not None:
        out["json_schema"] = json_schema if isinstance(json_schema, str) else json.dumps(json_schema)
    return out


def grammar_params(
    fmt: dict[str, Any] | None, regex: str | None, ebnf: str | None, json_schema: str | dict | None
) -> dict[str, str]:
    """Every grammar field of an OpenAI request; two constraints at once are a 400 naming the second one."""
    from_format = response_format_grammar(fmt)
    extras = extra_grammar(regex, ebnf, json_schema)
    if from_format and extras:
        name = next(iter(extras))
        raise InvalidRequestError(
            f"{name} cannot be combined with a response_format that constrains output.", name
        )
    if len(extras) > 1:
        name = list(extras)[1]
        raise InvalidRequestError("Only one of json_schema, regex, ebnf, or structural_tag can be set.", name)
    return from_format or extras
