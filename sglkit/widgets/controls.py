"""Server controls (button -> BackgroundTask -> ServerClient -> /flush_cache, /update_weights -> status line).

Each control works alone (``CacheControls(base_url)``) or inside :class:`~sglkit.widgets.ServerDashboard`,
which passes its own client and redraws after every action. The synchronous methods (``flush``, ``update``)
return an :class:`ActionResult`; the buttons run them on a background thread (``wait()`` joins it).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from sglkit.widgets.client import ServerClient
from sglkit.widgets.formatting import format_count
from sglkit.widgets.tasks import BackgroundTask

__all__ = ["ActionResult", "CacheControls", "WeightControls"]

_OK, _FAIL, _INFO = "#2ca02c", "#d62728", "#555"


@dataclass
class ActionResult:
    """What a control did: ``ok``, the message shown, the HTTP status (None: no answer) and extras."""

    ok: bool
    message: str
    status: int | None = None
    details: dict[str, Any] | None = None


def status_html(text: str, color: str, css_class: str) -> str:
    """A status line (multi-line text kept as is)."""
    return (
        f"<div class='{css_class}' style='color:{color};white-space:pre-wrap;font-size:13px'>"
        f"{html.escape(text)}</div>"
    )


class _Control(widgets.VBox):
    """Shared parts: a client, a background task, a status line, result callbacks."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        client: ServerClient | None,
        timeout: float,
        task_name: str,
        children: list,
    ) -> None:
        if client is None:
            if base_url is None:
                raise ValueError("Give base_url (e.g. 'http://127.0.0.1:30000') or client.")
            client = ServerClient(base_url, api_key, timeout)
        self.client = client
        self.task = BackgroundTask(task_name)
        self.last_result: ActionResult | None = None
        self._callbacks: list[Callable[[ActionResult], Any]] = []
        super().__init__(children)

    def on_result(self, callback: Callable[[ActionResult], Any]) -> None:
        """Call ``callback(result)`` after every action (the dashboard uses it to redraw)."""
        self._callbacks.append(callback)

    def _finish(self, result: ActionResult) -> ActionResult:
        self.last_result = result
        for callback in self._callbacks:
            callback(result)
        return result

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the action a button started; True once none is running."""
        return self.task.wait(timeout)


class CacheControls(_Control):
    """A "Flush cache" button for POST /flush_cache: shows the result, or the server's reason for refusing
    (requests running or waiting), and the cached-token count before and after."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        client: ServerClient | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.button = widgets.Button(
            description="Flush cache",
            icon="trash",
            button_style="warning",
            tooltip="POST /flush_cache: empty the radix (prefix) cache",
        )
        self.status = widgets.HTML(layout=widgets.Layout(min_height="20px"))
        self.status.add_class("sglkit-cache-status")
        super().__init__(
            base_url,
            api_key,
            client,
            timeout,
            "sglkit-flush-cache",
            [widgets.HTML("<b>Radix cache</b>"), self.button, self.status],
        )
        self.add_class("sglkit-cache-controls")
        self.button.on_click(lambda _: self.task.start(self.flush))

    def _cached_tokens(self) -> int | None:
        reply = self.client.server_info()
        return reply.data.get("num_cached_tokens") if reply.ok and isinstance(reply.data, dict) else None

    def flush(self) -> ActionResult:
        """Flush the radix cache now; the result is also shown in the widget."""
        self.button.disabled = True
        self.status.value = status_html("Flushing...", _INFO, "sglkit-cache-status")
        try:
            before = self._cached_tokens()
            reply = self.client.flush_cache()
            if reply.ok:
                after = self._cached_tokens()
                first_line = str(reply.data).splitlines()[0] if reply.data else "Cache flushed."
                message = f"{first_line} Cached tokens: {format_count(before)} -> {format_count(after)}."
                result = ActionResult(True, message, reply.status, {"before": before, "after": after})
            elif reply.reachable:
                result = ActionResult(False, f"Refused (HTTP {reply.status}): {reply.error}", reply.status)
            else:
                result = ActionResult(False, f"Server unreachable: {reply.error}")
            self.status.value = status_html(
                result.message, _OK if result.ok else _FAIL, "sglkit-cache-status"
            )
        finally:
            self.button.disabled = False
        return self._finish(result)


class WeightControls(_Control):
    """A checkpoint path field and an "Update weights" button for POST /update_weights.

    Shows success, or the failure message with its rollback notice, and the model path (and weight version,
    if the server reports one) now served.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        client: ServerClient | None = None,
        timeout: float = 5.0,
        update_timeout: float = 300.0,
    ) -> None:
        self.update_timeout = update_timeout
        self.path = widgets.Text(
            placeholder="/path/to/checkpoint (safetensors folder)", layout=widgets.Layout(width="420px")
        )
        self.button = widgets.Button(
            description="Update weights",
            icon="refresh",
            button_style="primary",
            tooltip="POST /update_weights: load same-shaped weights from this folder",
        )
        self.status = widgets.HTML(layout=widgets.Layout(min_height="20px"))
        self.serving = widgets.HTML()
        self.serving.add_class("sglkit-serving")
        super().__init__(
            base_url,
            api_key,
            client,
            timeout,
            "sglkit-update-weights",
            [
                widgets.HTML("<b>Weights</b>"),
                widgets.HBox([self.path, self.button]),
                self.status,
                self.serving,
            ],
        )
        self.add_class("sglkit-weight-controls")
        self.button.on_click(lambda _: self.task.start(self.update))
        self.served_model: str | None = None

    def show_serving(self, info: dict[str, Any] | None = None) -> str | None:
        """Fetch (or take) /get_model_info and show what is served; returns the model path (None if unknown)."""
        if info is None:
            reply = self.client.model_info()
            info = reply.data if reply.ok and isinstance(reply.data, dict) else None
        if info is None:
            self.serving.value = "<span style='color:#777'>Serving: unknown (server not answering)</span>"
            return None
        self.served_model = info.get("model_path")
        version = info.get("weight_version")
        extra = (
            f" &middot; weight version <code>{html.escape(str(version))}</code>"
            if version is not None
            else ""
        )
        self.serving.value = (
            f"<span style='font-size:13px'>Serving: <code>{html.escape(str(self.served_model))}"
            f"</code>{extra}</span>"
        )
        return self.served_model

    def update(self, model_path: str | None = None) -> ActionResult:
        """Load the weights in ``model_path`` (default: the path field) into the running server."""
        model_path = (self.path.value if model_path is None else model_path).strip()
        if not model_path:
            result = ActionResult(False, "Enter the folder of a checkpoint first.")
            self.status.value = status_html(result.message, _FAIL, "sglkit-weights-status")
            return self._finish(result)
        self.path.value = model_path
        self.button.disabled = True
        self.status.value = status_html(
            f"Updating weights from {model_path} ...", _INFO, "sglkit-weights-status"
        )
        try:
            reply = self.client.update_weights(model_path, timeout=self.update_timeout)
            body = reply.data if isinstance(reply.data, dict) else {}
            if reply.ok and body.get("success"):
                result = ActionResult(True, str(body.get("message", "Weights updated.")), reply.status, body)
            elif reply.reachable:
                message = str(body.get("message") or reply.error)
                result = ActionResult(False, message, reply.status, body)
            else:
                result = ActionResult(False, f"Server unreachable: {reply.error}")
            served = self.show_serving()
            text = result.message
            if not result.ok and served:
                text += f"\nThe server keeps serving {served}."
            self.status.value = status_html(text, _OK if result.ok else _FAIL, "sglkit-weights-status")
        finally:
            self.button.disabled = False
        return self._finish(result)
