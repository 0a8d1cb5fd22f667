"""HTTP errors (edge of the server, every route): one OpenAI-style error body and the app's exception handlers.

Every error answer has OpenAI's nested shape ``{"error": {"message", "type", "param", "code"}}``:

=================================================  ======  =========================================
cause                                              status  type
=================================================  ======  =========================================
malformed JSON, non-object body, validation error  400     invalid_request_error (never 422)
InvalidRequestError / SamplingParamError           400     invalid_request_error, ``param`` from it
OpenAIError (raised by routes)                     its own its own
Starlette HTTPException (404, 405, ...)            same    invalid_request_error (server_error if 5xx)
ServerUnavailableError (scheduler process gone)    503     server_error
anything else                                      500     server_error, generic message, logged once
=================================================  ======  =========================================

Bodies are serialized with ``ensure_ascii`` so lone surrogates or odd bytes can never make the error path fail,
and validation messages never echo the request's input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from sglkit.core.sampling_params import SamplingParamError
from sglkit.runtime.frontend.input_processor import InvalidRequestError
from sglkit.server.tokenizer_manager import ServerUnavailableError

logger = logging.getLogger("sglkit.server")

# Loc entries pydantic adds for union members ("str", "list[int]", "function-after[...]"): not field names.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "bytes", "any"})
_NON_OBJECT_ERRORS = frozenset({"model_attributes_type", "dict_type", "model_type", "missing"})
MAX_LISTED_ERRORS = 3
RETRY_AFTER_S = 1  # the Retry-After (seconds) of every 503 answer


class SafeJSONResponse(JSONResponse):
    """JSONResponse that always renders: ASCII-escaped (lone surrogates survive), NaN/inf allowed."""

    def render(self, content: Any) -> bytes:
        """Serialize ``content`` as ASCII JSON."""
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class OpenAIError(Exception):
    """Raise from a route to answer with exactly this status, message, param, type and code."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        err_type: str | None = None,
        code: int | str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type
        self.code = code


def error_type_for(status: int) -> str:
    """OpenAI's ``type`` for an HTTP status: ``server_error`` for 5xx, ``invalid_request_error`` otherwise."""
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(message: str, err_type: str, param: str | None = None, code: int | str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}`` (also the in-band error event of a stream)."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    err_type: str | None = None,
    code: int | str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An OpenAI-style error answer; ``type`` defaults by status and ``code`` to the status."""
    body = error_body(message, err_type or error_type_for(status), param, status if code is None else code)
    if status == 503 and not (headers and "Retry-After" in headers):  # queue full, timeouts, shutting down
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}
    return SafeJSONResponse(body, status_code=status, headers=headers)


def loc_to_param(loc: Sequence[Any]) -> str | None:
    """Pydantic error location -> field path like ``messages[0].content``; None for the body itself."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            if not path:
                break  # a position in the body itself (JSON error offset, list item)
            path += f"[{part}]"
            continue
        name = str(part)
        if not name.isidentifier() or name.lower() in _TYPE_TAGS:
            break  # a union-member tag: the field path ends here
        path = f"{path}.{name}" if path else name
    return path or None


def validation_error_response(errors: Sequence[dict[str, Any]]) -> JSONResponse:
    """400 for pydantic/FastAPI validation errors; only locations and pydantic's messages, never the input."""
    errors = list(errors)
    if not errors:
        return error_response(400, "Invalid request.")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "JSON decode error")
        return error_response(400, f"The request body is not valid JSON: {detail}.")
    if loc_to_param(first.get("loc", ())) is None and first.get("type") in _NON_OBJECT_ERRORS:
        return error_response(400, "The request body must be a JSON object.")
    lines: list[str] = []
    for err in errors:
        param = loc_to_param(err.get("loc", ())) or "body"
        line = f"{param}: {err.get('msg', 'invalid value')}"
        if line not in lines:
            lines.append(line)
    shown = "; ".join(lines[:MAX_LISTED_ERRORS])
    if len(lines) > MAX_LISTED_ERRORS:
        shown += f" (and {len(lines) - MAX_LISTED_ERRORS} more)"
    return error_response(400, f"Invalid request: {shown}", param=loc_to_param(first.get("loc", ())))


def log_rejected(request: Request, response: JSONResponse) -> JSONResponse:
    """``--log-requests``: one line per refused request (4xx) with its route, status, param and reason."""
    server_args = getattr(request.app.state, "server_args", None)
    if getattr(server_args, "log_requests", False) and 400 <= response.status_code < 500:
        error = json.loads(response.body)["error"]
        param = f" (param: {error['param']})" if error.get("param") else ""
        logger.info(
            f"Rejected request: {request.method} {request.url.path} -> {response.status_code}{param}: "
            f"{error['message']}"
        )
    return response


async def _on_request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return log_rejected(request, validation_error_response(exc.errors()))


async def _on_openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
    return log_rejected(request, error_response(exc.status, exc.message, exc.param, exc.err_type, exc.code))


async def _on_invalid_request(request: Request, exc: InvalidRequestError) -> JSONResponse:
    return log_rejected(request, error_response(400, str(exc), param=exc.param))


async def _on_sampling_param(request: Request, exc: SamplingParamError) -> JSONResponse:
    return log_rejected(request, error_response(400, str(exc), param=exc.param))


async def _on_http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
    if status == 404 and message == "Not Found":
        message = f"Not Found: no route {request.method} {request.url.path}."
    elif status == 405 and message == "Method Not Allowed":
        message = f"Method Not Allowed: {request.method} {request.url.path}."
    return error_response(status, message, headers=getattr(exc, "headers", None))


async def _on_unavailable(request: Request, exc: ServerUnavailableError) -> JSONResponse:
    return error_response(503, str(exc) or "The server is unavailable.")


class UnexpectedErrorMiddleware:
    """Pure ASGI guard: an unhandled exception becomes one logged 500 error body (not re-raised, not logged twice).

    Once a response has started (a stream) nothing can be sent any more; the exception is logged and swallowed.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        """Run the app; turn an escaping exception into a 500 answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except ClientDisconnect:  # the client left mid-upload (or was cut off as too slow): normal, no trace
            logger.debug(f"Client disconnected during {scope.get('method')} {scope.get('path')}")
            if not started:  # a no-op on a closed connection; a 400 (not uvicorn's 500) on an open one
                response = error_response(400, "The client disconnected while sending the request.")
                await response(scope, receive, send)
        except Exception:
            logger.exception(f"Unexpected error handling {scope.get('method')} {scope.get('path')}")
            if started:
                return
            response = error_response(500, "Internal server error.")
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers above on ``app`` (call once, at app construction)."""
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(OpenAIError, _on_openai_error)
    app.add_exception_handler(InvalidRequestError, _on_invalid_request)
    app.add_exception_handler(SamplingParamError, _on_sampling_param)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(ServerUnavailableError, _on_unavailable)
    app.add_middleware(UnexpectedErrorMiddleware)
