"""SGLang's native HTTP API: /generate, /get_model_info, /get_server_args, /get_server_info, /health,
/health_generate, /flush_cache, /get_memory_pool_size, /update_weights, /abort_request, /metrics.

Routes are thin: parse -> TokenizerManager -> shape the response as the seed documents show it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict

from sglkit import __version__
from sglkit.runtime.frontend.input_processor import GenerateInput
from sglkit.runtime.frontend.token_only import require_tokenizer
from sglkit.server.errors import error_body, error_response, error_type_for
from sglkit.server.generate_request import GenerateReqInput, add_logprob_texts, parse_generate_request
from sglkit.server.metrics import HEALTH_CHECK_RID_PREFIX
from sglkit.server.openai_logprobs import TokenText
from sglkit.server.protocol import Bool, parse_json_object, validate_request

router = APIRouter()

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

FLUSH_OK_TEXT = (
    "Cache flushed.\nPlease check backend logs for more details. "
    "(When there are running or waiting requests, the operation will not be performed.)"
)


class UpdateWeightsReqInput(BaseModel):
    """Body of /update_weights (safetensors folders only)."""

    model_config = ConfigDict(extra="ignore")
    model_path: str


class AbortReqInput(BaseModel):
    """Body of /abort_request."""

    model_config = ConfigDict(extra="ignore")
    rid: str | None = None
    abort_all: Bool = False


def _tm(request: Request):
    return request.app.state.tokenizer_manager


async def _parse(request: Request, model: type[BaseModel]) -> BaseModel:
    """Body -> ``model``, whatever the Content-Type (curl -d sends form-urlencoded); errors become 400s."""
    return validate_request(model, parse_json_object(await request.body()))


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace") + b"\n\n"


def _native_chunk(
    chunk: dict[str, Any], with_index: bool, token_text: TokenText | None = None
) -> dict[str, Any]:
    """One request's SGLang answer; ``token_text`` (return_text_in_logprobs) fills the logprob entries' text."""
    meta_info = chunk["meta_info"]
    if token_text is not None:
        meta_info = dict(meta_info)
        add_logprob_texts(meta_info, token_text)
    out = {"text": chunk["text"], "output_ids": chunk["output_ids"], "meta_info": meta_info}
    if with_index:
        out["index"] = chunk["index"]
    return out


@router.api_route("/generate", methods=["POST", "PUT"])
async def generate(request: Request) -> Response:
    """Native generation: text or input_ids, single or batch, optional SSE streaming of cumulative text."""
    obj: GenerateReqInput = parse_generate_request(await request.body())
    if request.app.state.server_args.is_embedding:
        return error_response(
            400, "This model is an embedding model; use /encode or /v1/embeddings.", "model"
        )
    tm = _tm(request)
    if obj.return_text_in_logprobs:
        require_tokenizer(tm.tokenizer, "return_text_in_logprobs", "return_text_in_logprobs")
    is_batch, reqs, _ = await tm.tokenize(obj.to_generate_input())
    with_index = is_batch or len(reqs) > 1
    token_text = TokenText(tm.tokenizer) if obj.return_text_in_logprobs else None
    if obj.stream:
        tm.check_new_rids(reqs)  # a 400 now, not an in-band error after the 200

        async def stream() -> AsyncIterator[bytes]:
            try:
                incremental = tm.server_args.incremental_streaming_output
                async for chunk in tm.run(reqs, request=request, incremental=incremental):
                    if chunk["error"]:
                        status = chunk["error_status"]
                        yield _sse(error_body(chunk["error"], error_type_for(status), None, status))
                        break
                    yield _sse(_native_chunk(chunk, with_index, token_text))
            except Exception as e:  # noqa: BLE001 - errors after the 200 go in-band
                yield _sse({"error": {"message": str(e), "type": "server_error"}})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")
    finals: list[dict[str, Any]] = [None] * len(reqs)  # type: ignore[list-item]
    async for chunk in tm.run(reqs, request=request):
        finals[chunk["index"]] = chunk
    if any(c is None for c in finals):  # the client went away (its requests were aborted): nobody reads this
        return Response(status_code=499)
    failed = [c for c in finals if c["error"]]
    if failed:
        return error_response(failed[0]["error_status"], failed[0]["error"])
    outputs = [_native_chunk(c, False, token_text) for c in finals]
    return JSONResponse(outputs if with_index else outputs[0])


@router.get("/health")
async def health(request: Request) -> Response:
    """200 (empty body, as SGLang) once the server has warmed up and its runtime is alive; 503 otherwise (also
    while it shuts down)."""
    tm = _tm(request)
    if not request.app.state.ready or not tm.alive or tm.draining:
        return Response(status_code=503)
    return Response(status_code=200)


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    """200 when the runtime generates one token within 20 s; 503 otherwise."""
    tm = _tm(request)
    if not tm.alive:
        return Response(status_code=503)
    inp = GenerateInput(  # SGLang's health-check rid: not counted in /metrics
        input_ids=[0],
        sampling_params={"max_new_tokens": 1, "temperature": 0},
        rid=f"{HEALTH_CHECK_RID_PREFIX}_{uuid.uuid4().hex}",
    )
    if request.app.state.server_args.is_embedding:
        return Response(status_code=200 if request.app.state.ready else 503)
    try:
        await asyncio.wait_for(tm.generate_once(inp), timeout=20)
    except Exception:  # noqa: BLE001 - any failure means unhealthy
        return Response(status_code=503)
    return Response(status_code=200)


@router.get("/get_model_info")
@router.get("/model_info")
async def get_model_info(request: Request) -> dict[str, Any]:
    """Exactly ``model_path`` and ``is_generation``."""
    return {
        "model_path": _tm(request).model_path,
        "is_generation": not request.app.state.server_args.is_embedding,
    }


@router.get("/get_server_args")
async def get_server_args(request: Request) -> dict[str, Any]:
    """All server arguments."""
    return request.app.state.server_args.to_dict()


@router.get("/get_server_info")
@router.get("/server_info")
async def get_server_info(request: Request) -> dict[str, Any]:
    """Server arguments plus live runtime statistics (dp_size > 1: the totals, each replica's under
    ``replicas`` and the router's policy and decision counts under ``router``)."""
    tm = _tm(request)
    stats = await tm.get_stats()
    return {
        **request.app.state.server_args.to_dict(),
        **stats,
        "request_registry": tm.registry_info(),
        "version": __version__,
    }


@router.api_route("/get_memory_pool_size", methods=["GET", "POST"])
async def get_memory_pool_size(request: Request) -> int:
    """Size of the KV pool in tokens."""
    return _tm(request).max_total_num_tokens


@router.post("/flush_cache")
async def flush_cache(request: Request) -> Response:
    """Flush the radix cache; 400 with the reason while requests are running or waiting."""
    result = await _tm(request).flush_cache()
    if not result.success:
        return PlainTextResponse(result.message, status_code=400)
    return PlainTextResponse(FLUSH_OK_TEXT)


@router.post("/update_weights")
@router.post("/update_weights_from_disk")
async def update_weights(request: Request) -> Response:
    """Swap in same-shaped safetensors weights; the old weights stay on failure."""
    obj = await _parse(request, UpdateWeightsReqInput)
    result = await _tm(request).update_weights(obj.model_path)
    body = {"success": result.success, "message": result.message}
    return JSONResponse(body, status_code=200 if result.success else 400)


@router.post("/abort_request")
async def abort_request(request: Request) -> Response:
    """Abort a request by ``rid`` (or all with ``abort_all``); 404 for an id not in flight."""
    obj = await _parse(request, AbortReqInput)
    if not obj.abort_all and not obj.rid:
        return error_response(400, "Give rid or abort_all=true.", "rid")
    if not _tm(request).abort_request(obj.rid, obj.abort_all):
        return error_response(404, f"No request with rid {obj.rid!r} is in flight.", "rid", code="not_found")
    return JSONResponse({"success": True, "message": "Abort requested."})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text exposition under SGLang's names (with --enable-metrics): see sglkit.server.metrics.

    With data parallelism each scheduler metric has one series per replica (``dp_rank="0"``, ...); sum them for
    the server's total.
    """
    if not request.app.state.server_args.enable_metrics:
        return error_response(
            404, "Metrics are disabled; start the server with --enable-metrics.", code="not_found"
        )
    tm = _tm(request)
    return Response(tm.metrics.render(await tm.get_stats()), media_type=METRICS_CONTENT_TYPE)
