"""The widgets' HTTP client (widget -> ServerClient -> a running sglkit server's native and OpenAI routes).

Every request has a timeout and no method raises on a network or HTTP failure: answers are :class:`Reply`
objects whose ``error`` says in words what went wrong, so a dead or unreachable server shows up in a widget
as a message, not a traceback. The one exception is :meth:`ServerClient.stream_chat`, a generator that raises
:class:`RequestFailed` (a plain message) for its caller to render.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests

__all__ = ["Reply", "RequestFailed", "ServerClient"]

DEFAULT_TIMEOUT = 5.0
"""Seconds for a status or control request (connect and read)."""

UPDATE_WEIGHTS_TIMEOUT = 300.0
"""Seconds for /update_weights: the server first lets requests in flight finish."""

STREAM_READ_TIMEOUT = 120.0
"""Longest silence (s) between two events of a streamed chat reply."""


@dataclass
class Reply:
    """One HTTP exchange. ``status`` is None when no answer came (unreachable, timed out)."""

    ok: bool
    status: int | None = None
    data: Any = None
    error: str = ""

    @property
    def reachable(self) -> bool:
        """True when the server answered at all (any HTTP status)."""
        return self.status is not None


class RequestFailed(Exception):
    """A streamed request failed; ``str(exc)`` is the message to show."""


def is_loopback(base_url: str) -> bool:
    """True for URLs on this machine (proxy environment variables must not capture them)."""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    if host in ("localhost", "0.0.0.0", "::") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_text(response: requests.Response) -> str:
    """The readable reason of an error answer: OpenAI ``error.message``, ``message``, or the body text."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text or f"HTTP {response.status_code}"
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
        if body.get("detail"):
            return str(body["detail"])
    return json.dumps(body)


class ServerClient:
    """Small client for one server: ``base_url`` (``http://host:port``), optional ``api_key`` (sent as
    ``Authorization: Bearer``), ``timeout`` (s) for every status/control request."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._local = threading.local()  # one requests.Session per thread (Session is not thread-safe)

    def __repr__(self) -> str:
        return f"ServerClient({self.base_url!r})"

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = not is_loopback(self.base_url)
            if self.api_key:
                session.headers["Authorization"] = f"Bearer {self.api_key}"
            self._local.session = session
        return session

    def _failure(self, exc: requests.RequestException, path: str, timeout: float) -> Reply:
        if isinstance(exc, requests.Timeout):
            return Reply(False, None, None, f"no answer from {self.base_url}{path} within {timeout:g} s")
        if isinstance(exc, requests.ConnectionError):
            return Reply(False, None, None, f"cannot reach {self.base_url} (connection refused or closed)")
        return Reply(False, None, None, f"{type(exc).__name__}: {exc}")

    def request(
        self, method: str, path: str, *, json_body: Any = None, timeout: float | None = None
    ) -> Reply:
        """``method path`` -> Reply; JSON answers are parsed, others kept as text. Never raises for I/O."""
        timeout = self.timeout if timeout is None else timeout
        try:
            response = self._session().request(method, self.base_url + path, json=json_body, timeout=timeout)
        except requests.RequestException as exc:
            return self._failure(exc, path, timeout)
        ok = 200 <= response.status_code < 300
        if response.headers.get("content-type", "").startswith("application/json"):
            try:
                data: Any = response.json()
            except ValueError:
                data = response.text
        else:
            data = response.text
        error = "" if ok else error_text(response)
        if response.status_code in (401, 403):
            error = f"HTTP {response.status_code}: " + (
                "the API key was rejected" if self.api_key else "the server needs an API key (api_key=...)"
            )
        return Reply(ok, response.status_code, data, error)

    # -- routes -----------------------------------------------------------------------------------------------
    def health(self) -> Reply:
        """GET /health: 200 ready, 503 starting or unhealthy."""
        return self.request("GET", "/health")

    def server_info(self) -> Reply:
        """GET /get_server_info: server arguments plus live statistics."""
        return self.request("GET", "/get_server_info")

    def model_info(self) -> Reply:
        """GET /get_model_info: the model path now served."""
        return self.request("GET", "/get_model_info")

    def flush_cache(self) -> Reply:
        """POST /flush_cache: 200 text when flushed, 400 with the reason while requests are in flight."""
        return self.request("POST", "/flush_cache")

    def update_weights(self, model_path: str, timeout: float = UPDATE_WEIGHTS_TIMEOUT) -> Reply:
        """POST /update_weights ``{"model_path"}`` -> ``{"success", "message"}`` (400 and a rollback on failure)."""
        return self.request("POST", "/update_weights", json_body={"model_path": model_path}, timeout=timeout)

    def stream_chat(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        stop: threading.Event | None = None,
        read_timeout: float = STREAM_READ_TIMEOUT,
    ) -> Iterator[str]:
        """Stream ``/v1/chat/completions``: yields the text deltas as they arrive.

        Raises RequestFailed with a readable message (unreachable, HTTP error, in-band error event). Setting
        ``stop`` ends the stream after the current event and closes the connection (the server aborts).
        """
        body: dict[str, Any] = {"model": "default", "messages": messages, "stream": True}
        for key, value in (("temperature", temperature), ("top_p", top_p), ("max_tokens", max_tokens)):
            if value is not None:
                body[key] = value
        path = "/v1/chat/completions"
        try:
            response = self._session().post(
                self.base_url + path, json=body, stream=True, timeout=(self.timeout, read_timeout)
            )
        except requests.RequestException as exc:
            raise RequestFailed(self._failure(exc, path, self.timeout).error) from None
        with response:
            if response.status_code != 200:
                raise RequestFailed(f"HTTP {response.status_code}: {error_text(response)}")
            try:
                for line in response.iter_lines():
                    if stop is not None and stop.is_set():
                        return
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[len(b"data:") :].strip()
                    if payload == b"[DONE]":
                        return
                    event = json.loads(payload)
                    if "error" in event:
                        raise RequestFailed(str(event["error"].get("message", event["error"])))
                    for choice in event.get("choices", []):
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield text
            except requests.RequestException as exc:
                raise RequestFailed(self._failure(exc, path, read_timeout).error) from None

    def close(self) -> None:
        """Close this thread's connection pool."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None
