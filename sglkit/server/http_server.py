"""HTTP server: starts the scheduler process, then serves the native and OpenAI APIs with FastAPI + uvicorn.

launch_server: log args -> check the port -> spawn the scheduler process (loads the model; ``server.replicas``)
-> load the tokenizer meanwhile -> wait until the scheduler is ready -> uvicorn -> one warmup request -> "The
server is fired up and ready to roll!" -> /health turns 200.
The HTTP process only tokenizes and routes; the scheduler process dies with it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from contextlib import asynccontextmanager

import requests
import uvicorn
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from sglkit.server import (
    embeddings_api,
    native_api,
    openai_api,
    parser_api,
    rerank_api,
    responses_api,
    score_api,
    tokenize_api,
)
from sglkit.server.errors import error_body, install_error_handlers
from sglkit.server.graceful_server import GracefulServer
from sglkit.server.http_limits import MAX_HEADER_BYTES, HeaderSizeLimitMiddleware, limited_h11_protocol
from sglkit.server.openapi_schema import install_openapi
from sglkit.server.replicas import ReplicaSet, begin_launch
from sglkit.server.tokenizer_manager import TokenizerManager, preload_tokenizer
from sglkit.server_args import ServerArgs

logger = logging.getLogger("sglkit.server")

AUTH_EXEMPT_PATHS = frozenset({"/health", "/health_generate"})
MAX_BODY_BYTES = 64 << 20
WARMUP_PROMPT = "The capital city of France is"
WARMUP_IDS = [10, 11, 12]  # the warmup prompt with --skip-tokenizer-init (SGLang's ids)
GRACEFUL_SHUTDOWN_S = 1.0  # after the drain (GracefulServer): connections still open are closed


async def send_error(send, status: int, message: str, code: int | str) -> None:
    """Answer from ASGI middleware with the project's OpenAI-style error body (``errors.error_body``)."""
    body = json.dumps(error_body(message, "invalid_request_error", code=code)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class APIKeyMiddleware:
    """Pure ASGI auth (keeps client-disconnect events working): Bearer key on every route but the exempt ones."""

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in AUTH_EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if secrets.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        await send_error(send, 401, "Unauthorized: a valid API key is required.", "invalid_api_key")


class BodySizeLimitMiddleware:
    """Refuse request bodies over ``MAX_BODY_BYTES`` with 413: by Content-Length up front, and by counting the
    bytes of chunked uploads as they arrive (the 413 then comes from the route's body read)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            await send_error(send, 413, "Request body too large.", 413)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise StarletteHTTPException(413, "Request body too large.")
            return message

        await self.app(scope, counting_receive, send)


def create_app(server_args: ServerArgs, tokenizer_manager: TokenizerManager, scheduler_process) -> FastAPI:
    """The FastAPI app with native + OpenAI routes, error handlers and middleware."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tokenizer_manager.start(scheduler_process)
        yield

    app = FastAPI(title="sglkit", version="0.1.0", lifespan=lifespan)
    app.state.server_args = server_args
    app.state.tokenizer_manager = tokenizer_manager
    app.state.ready = server_args.skip_server_warmup
    app.include_router(native_api.router)
    app.include_router(openai_api.router)
    app.include_router(responses_api.router)
    app.include_router(embeddings_api.router)
    app.include_router(parser_api.router)
    app.include_router(tokenize_api.router)
    app.include_router(score_api.router)
    app.include_router(rerank_api.router)
    install_error_handlers(app)
    install_openapi(app, bool(server_args.api_key), AUTH_EXEMPT_PATHS)
    app.add_middleware(BodySizeLimitMiddleware)
    if server_args.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=server_args.api_key)
    app.add_middleware(HeaderSizeLimitMiddleware)  # outermost: before auth and every route
    return app


def uvicorn_log_config(level: str) -> dict:
    """uvicorn logging in SGLang's shape: ``[time] INFO:     127.0.0.1:port - "GET /x HTTP/1.1" 200 OK``."""
    datefmt = "%Y-%m-%d %H:%M:%S"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "default": {
                "()": "uvicorn.logging.DefaultFormatter",
                "fmt": "[%(asctime)s] %(levelprefix)s %(message)s",
                "datefmt": datefmt,
                "use_colors": False,
            },
            "access": {
                "()": "uvicorn.logging.AccessFormatter",
                "datefmt": datefmt,
                "use_colors": False,
                "fmt": '[%(asctime)s] %(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s',
            },
        },
        "handlers": {
            "default": {
                "formatter": "default",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            },
            "access": {"formatter": "access", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"level": level.upper(), "propagate": True},  # configure_logging turned it off
            "uvicorn.access": {"handlers": ["access"], "level": level.upper(), "propagate": False},
        },
    }


def local_base_url(host: str, port: int) -> str:
    """A loopback URL reaching a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def warmup(app: FastAPI, server_args: ServerArgs) -> None:
    """Wait for uvicorn, send one warmup request, then mark the server ready (or shut it down on failure)."""
    url = local_base_url(server_args.host, server_args.port)
    session = requests.Session()
    session.trust_env = False  # proxies never apply to loopback
    headers = {"Authorization": f"Bearer {server_args.api_key}"} if server_args.api_key else {}
    try:
        for _ in range(120):
            try:
                if session.get(f"{url}/get_model_info", headers=headers, timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        prompt = {"input_ids": WARMUP_IDS} if server_args.skip_tokenizer_init else {"text": WARMUP_PROMPT}
        if server_args.is_embedding:
            resp = session.post(f"{url}/encode", json=prompt, headers=headers, timeout=600)
        else:
            resp = session.post(
                f"{url}/generate",
                headers=headers,
                timeout=600,
                json={**prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 8}},
            )
        resp.raise_for_status()
    except Exception as e:  # noqa: BLE001 - any failure ends the server
        logger.error(f"Initialization failed. warmup error: {e}")
        os.kill(os.getpid(), signal.SIGTERM)
        return
    app.state.ready = True
    logger.info("The server is fired up and ready to roll!")


def _exit_on_signal(signum: int, _frame) -> None:
    """SIGTERM: unwind (so ``launch_server``'s cleanup runs) and exit with the shell's code, 128 + signal."""
    raise SystemExit(128 + signum)


def launch_server(server_args: ServerArgs, replicas: ReplicaSet | None = None) -> None:
    """Run the server until it is stopped (SIGINT/SIGTERM); the scheduler processes go down with it.

    ``replicas``: already spawned by the caller (``python -m sglkit.launch_server`` spawns them before importing
    this module, so the model loads while the HTTP stack is imported); else spawned here. With ``dp_size`` N,
    N replicas are started one after the other, each with its own IPC sub-folder.

    uvicorn handles SIGTERM with a graceful shutdown and then re-raises it under the handler it found, so
    a Python handler is installed first: the process then unwinds through the cleanup below (scheduler
    process stopped, IPC folder removed) instead of being killed by the default action.
    """
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        if replicas is None:
            replicas = begin_launch(server_args)
        try:  # in this process while the ranks load the model
            tokenizer = preload_tokenizer(server_args)
        except Exception:  # noqa: BLE001 - the scheduler's error (e.g. a bad model path) is reported first;
            tokenizer = None  # the TokenizerManager then loads it again and raises its own error
        infos = replicas.wait_ready()
    except BaseException:
        if replicas is not None:
            replicas.stop()
        raise
    processes, port_args = replicas.processes, replicas.port_args
    tokenizer_manager = None
    try:
        tokenizer_manager = TokenizerManager(server_args, port_args, infos[0], tokenizer=tokenizer)
        app = create_app(server_args, tokenizer_manager, processes)
        if not server_args.skip_server_warmup:
            threading.Thread(
                target=warmup, args=(app, server_args), daemon=True, name="sglkit-warmup"
            ).start()
        config = uvicorn.Config(
            app,
            host=server_args.host,
            port=server_args.port,
            log_config=uvicorn_log_config(server_args.log_level),
            timeout_keep_alive=5,
            loop="asyncio",
            http=limited_h11_protocol(server_args.http_read_timeout),  # header deadline, body gaps, JSON 431
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        GracefulServer(config, tokenizer_manager, server_args.graceful_shutdown_timeout).run()
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        replicas.stop()
        sys.stdout.flush()
        if tokenizer_manager is not None and tokenizer_manager.exit_code:  # the scheduler died: a failure
            raise SystemExit(tokenizer_manager.exit_code)
