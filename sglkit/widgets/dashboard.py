"""The server dashboard (notebook -> ServerDashboard -> ServerClient -> /health, /get_server_info,
/get_model_info), with the cache, weight and chat controls inside it.

``refresh()`` reads the health, one snapshot of the statistics and the served model, then redraws every
panel; ``start(interval)`` repeats that on a daemon thread until ``stop()``. A server that cannot be reached
keeps its last statistics on screen under a grey or red light. Given the ``process`` from
``launch_server_cmd``, the dashboard also shows the tail of the server log and can terminate the server.
"""

from __future__ import annotations

import html
import subprocess
import threading
from typing import Any

import ipywidgets as widgets

from sglkit.launch.process import tail_log, terminate_process
from sglkit.widgets.chat import ChatPlayground
from sglkit.widgets.client import Reply, ServerClient
from sglkit.widgets.controls import CacheControls, WeightControls
from sglkit.widgets.formatting import (
    args_table_html,
    format_count,
    format_duration,
    format_percent,
    health_html,
    log_html,
    summary_lines,
)
from sglkit.widgets.replicas import replica_lines, replicas_html
from sglkit.widgets.sparkline import Sparkline
from sglkit.widgets.tasks import BackgroundTask, Ticker

__all__ = ["ServerDashboard", "classify_health"]


def classify_health(health: Reply, has_process: bool, was_ready: bool) -> tuple[str, str]:
    """A /health answer -> ``(state, detail)``, state one of starting / ready / unhealthy / stopped.

    503 is "starting" until the server was once seen ready, "unhealthy" after. No answer at all is
    "starting" for a launched process not yet ready, "unhealthy" for one that was ready (its process is still
    alive), and "stopped" for a server known only by URL.
    """
    if health.ok:
        return "ready", ""
    if health.status is None:
        if has_process:
            return ("unhealthy", health.error) if was_ready else ("starting", "not listening yet")
        return "stopped", health.error
    if health.status == 503:
        return ("unhealthy", "health check failed (HTTP 503)") if was_ready else ("starting", "warming up")
    return "unhealthy", health.error or f"HTTP {health.status}"


def _card(title: str, *children: widgets.Widget, width: str) -> widgets.VBox:
    label = widgets.HTML(
        f"<div class='sglkit-card-title' style='font-size:12px;color:#555;"
        f"text-transform:uppercase;letter-spacing:0.04em'>{title}</div>"
    )
    box = widgets.VBox(
        [label, *children],
        layout=widgets.Layout(width=width, border="1px solid #e0e0e0", padding="4px 8px", margin="2px"),
    )
    box.add_class("sglkit-card")
    return box


def _bar() -> widgets.FloatProgress:
    return widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="95%"))


class ServerDashboard(widgets.VBox):
    """A live view of one server: health light, model, server args, KV pool, radix cache, requests,
    throughput (with a chart of its recent history), totals, the data-parallel replicas (``--dp-size`` > 1:
    each one's running, queued, cache hit rate), and (with ``process``) its log and a
    Terminate button; plus :class:`CacheControls`, :class:`WeightControls` and a :class:`ChatPlayground`.

    ``timeout`` bounds every request (s); ``log_lines`` is how much of the log to show; ``history`` how many
    throughput points the chart keeps. Construction refreshes once unless ``refresh=False``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        process: subprocess.Popen | None = None,
        *,
        timeout: float = 5.0,
        log_lines: int = 15,
        history: int = 60,
        chat: bool = True,
        refresh: bool = True,
    ) -> None:
        self.client = ServerClient(base_url, api_key, timeout)
        self.process = process
        self.log_lines = log_lines
        self.state, self.detail = "starting", "not checked yet"
        self.stats: dict[str, Any] = {}
        self.served_model: str | None = None
        self.throughput: float | None = None
        self.num_refreshes = 0
        self._was_ready = False
        self._previous: tuple[float, float] | None = None  # (uptime_s, num_generated_tokens)
        self._lock = threading.RLock()
        self._ticker = Ticker(self.refresh, "sglkit-dashboard-refresh")
        self._terminate_task = BackgroundTask("sglkit-terminate-server")

        self.health = widgets.HTML()
        self.model_html = widgets.HTML()
        self.kv_bar, self.kv_text = _bar(), widgets.HTML()
        self.cache_bar, self.cache_text = _bar(), widgets.HTML()
        self.requests_html = widgets.HTML()
        self.throughput_html, self.sparkline = widgets.HTML(), Sparkline(size=history)
        self.totals_html = widgets.HTML()
        self.totals_html.add_class("sglkit-totals")
        self.replicas_html = widgets.HTML()  # one row per data-parallel replica (hidden without replicas)
        self.args_html = widgets.HTML()
        self.log_view = widgets.HTML()
        self.refresh_button = widgets.Button(description="Refresh", icon="sync")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.terminate_button = widgets.Button(
            description="Terminate server",
            icon="power-off",
            button_style="danger",
            disabled=process is None,
            tooltip="End the server process and its children",
        )
        self.terminate_button.on_click(lambda _: self._terminate_task.start(self.terminate))
        self.cache_controls = CacheControls(client=self.client)
        self.weight_controls = WeightControls(client=self.client)
        for control in (self.cache_controls, self.weight_controls):
            control.on_result(lambda _result: self.refresh())
        self.chat = ChatPlayground(client=self.client) if chat else None

        cards = widgets.HBox(
            [
                _card("KV pool", self.kv_bar, self.kv_text, width="190px"),
                _card("Radix cache", self.cache_bar, self.cache_text, width="190px"),
                _card("Requests", self.requests_html, width="120px"),
                _card("Throughput", self.throughput_html, self.sparkline, width="230px"),
                _card("Totals since start", self.totals_html, width="230px"),
            ],
            layout=widgets.Layout(flex_flow="row wrap"),
        )
        sections = [self.args_html] + ([self.log_view] if process is not None else [])
        titles = ["Server arguments"] + (["Server log"] if process is not None else [])
        if self.chat is not None:
            sections.append(self.chat)
            titles.append("Chat")
        details = widgets.Accordion(children=sections, titles=tuple(titles))
        controls = widgets.HBox(
            [self.cache_controls, self.weight_controls],
            layout=widgets.Layout(flex_flow="row wrap", justify_content="space-between"),
        )
        super().__init__(
            [
                widgets.HBox(
                    [self.health, self.refresh_button, self.terminate_button],
                    layout=widgets.Layout(align_items="center", justify_content="space-between"),
                ),
                self.model_html,
                cards,
                self.replicas_html,
                controls,
                details,
            ],
            layout=widgets.Layout(border="1px solid #ccc", padding="6px"),
        )
        self.add_class("sglkit-dashboard")
        self._draw()
        if refresh:
            self.refresh()

    # -- data ---------------------------------------------------------------------------------------------------
    def _fetch(self) -> tuple[str, str, dict | None, dict | None]:
        """-> (state, detail, server info or None, model info or None); never raises for I/O."""
        if self.process is not None and self.process.poll() is not None:
            return "stopped", f"server process exited with code {self.process.returncode}", None, None
        health = self.client.health()
        state, detail = classify_health(health, self.process is not None, self._was_ready)
        if not health.reachable or health.status in (401, 403):
            return state, detail, None, None
        info_reply = self.client.server_info()
        info = info_reply.data if info_reply.ok and isinstance(info_reply.data, dict) else None
        if info_reply.status in (401, 403):
            return "unhealthy", info_reply.error, None, None
        if info is None and state == "ready":
            detail = f"statistics unavailable: {info_reply.error}"
        model_reply = self.client.model_info() if info is not None else None
        model = model_reply.data if model_reply is not None and model_reply.ok else None
        return state, detail, info, model if isinstance(model, dict) else None

    def _update_throughput(self, info: dict[str, Any]) -> None:
        """Tokens generated per second of server uptime since the previous refresh (the chart's points)."""
        now = (float(info.get("uptime_s") or 0.0), float(info.get("num_generated_tokens") or 0.0))
        previous, self._previous = self._previous, now
        if previous is None or now[0] <= previous[0] or now[1] < previous[1]:
            rate = float(info.get("gen_throughput") or 0.0) if info.get("num_running_reqs") else 0.0
        else:
            rate = (now[1] - previous[1]) / (now[0] - previous[0])
        self.throughput = rate
        self.sparkline.push(rate)

    def refresh(self) -> None:
        """Fetch /health, one /get_server_info snapshot and /get_model_info, then redraw every panel.

        Bounded by the client's timeout per request; a dead or unreachable server shows in the light.
        """
        with self._lock:
            state, detail, info, model = self._fetch()
            self.state, self.detail = state, detail
            self._was_ready = self._was_ready or state == "ready"
            if info is not None:
                self.stats = info
                self._update_throughput(info)
            if model is not None:
                self.served_model = model.get("model_path")
                self.weight_controls.show_serving(model)
            self.num_refreshes += 1
            self._draw()

    # -- drawing ------------------------------------------------------------------------------------------------
    def _draw(self) -> None:
        s = self.stats
        self.health.value = health_html(self.state, self.detail, self.client.base_url)
        model = self.served_model or s.get("model_path")
        self.model_html.value = (
            f"<div class='sglkit-model' style='font-size:13px'>"
            f"Model <code>{html.escape(str(model or '-'))}</code> &middot; "
            f"context {format_count(s.get('context_len'))} tokens &middot; dtype {s.get('dtype', '-')} "
            f"&middot; sglkit {s.get('version', '-')} &middot; uptime {format_duration(s.get('uptime_s'))}</div>"
        )
        self.kv_bar.value = min(1.0, float(s.get("token_usage") or 0.0))
        self.kv_text.value = (
            f"{format_count(s.get('num_used_tokens'))} / {format_count(s.get('max_total_num_tokens'))}"
            f" tokens ({format_percent(s.get('token_usage'))})"
        )
        self.cache_bar.value = min(1.0, float(s.get("cache_hit_rate") or 0.0))
        self.cache_text.value = (
            f"hit rate {format_percent(s.get('cache_hit_rate'))}<br>"
            f"<span class='sglkit-cached-tokens'>{format_count(s.get('num_cached_tokens'))}"
            f"</span> cached tokens"
        )
        self.requests_html.value = (
            f"<span style='font-size:18px'>{format_count(s.get('num_running_reqs'))}</span> "
            f"running<br><span style='font-size:18px'>"
            f"{format_count(s.get('num_queue_reqs'))}</span> queued"
        )
        rate = 0.0 if self.throughput is None else self.throughput
        self.throughput_html.value = (
            f"<span style='font-size:18px'>{rate:.1f}</span> token/s "
            f"<span style='color:#777;font-size:11px'>(last batch "
            f"{float(s.get('gen_throughput') or 0.0):.1f})</span>"
        )
        self.totals_html.value = (
            f"<span class='sglkit-generated-tokens' style='font-size:18px'>"
            f"{format_count(s.get('num_generated_tokens'))}</span> generated tokens<br>"
            f"{format_count(s.get('num_finished_reqs'))} finished requests<br>"
            f"{format_count(s.get('total_prompt_tokens'))} prompt + "
            f"{format_count(s.get('total_completion_tokens'))} completion tokens"
        )
        self.replicas_html.value = replicas_html(s)
        self.replicas_html.layout.display = None if s.get("replicas") else "none"
        self.args_html.value = args_table_html(s) if s else "<i>no data yet</i>"
        if self.process is not None:
            self.log_view.value = log_html(tail_log(self.process, self.log_lines), self.log_lines)
            self.terminate_button.disabled = self.process.poll() is not None

    # -- actions ------------------------------------------------------------------------------------------------
    def start(self, interval: float = 2.0) -> None:
        """Refresh every ``interval`` seconds on a background thread (the kernel stays free) until stop()."""
        self._ticker.start(interval)

    def stop(self) -> bool:
        """Stop the auto-refresh; returns once its thread ended (at most one request timeout later)."""
        return self._ticker.stop(timeout=3 * self.client.timeout + 1)

    @property
    def running(self) -> bool:
        """True while the auto-refresh thread runs."""
        return self._ticker.running

    def terminate(self) -> None:
        """Take a last snapshot, terminate the server (its whole process tree) and redraw: the light
        turns to stopped and the last statistics stay on screen."""
        if self.process is None:
            raise ValueError("This dashboard was made without process=...; it cannot terminate the server.")
        self.terminate_button.disabled = True
        self.refresh()  # the final statistics stay on screen
        terminate_process(self.process)
        self.refresh()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for actions started by buttons (terminate, flush, update, chat); True once none runs."""
        tasks = [self._terminate_task, self.cache_controls.task, self.weight_controls.task]
        tasks += [self.chat.task] if self.chat is not None else []
        return all([task.wait(timeout) for task in tasks])

    def close(self) -> None:
        """Stop the auto-refresh and close the widget and its controls."""
        if hasattr(self, "_ticker"):
            self.stop()
        for name in ("cache_controls", "weight_controls", "chat"):
            control = getattr(self, name, None)
            if control is not None:
                control.close()
        super().close()

    # -- text ---------------------------------------------------------------------------------------------------
    def summary(self) -> str:
        """The dashboard as plain text."""
        lines = summary_lines(
            self.client.base_url, self.state, self.detail, self.stats, self.served_model, self.throughput
        )
        return "\n".join(lines + replica_lines(self.stats))

    def __repr__(self) -> str:
        return self.summary()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = self.summary()  # ipywidgets cuts it at 110 characters
        return bundle
