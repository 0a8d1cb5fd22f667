"""Notebook widgets to watch and steer a running sglkit server (built from stock ipywidgets).

    from sglkit.widgets import ServerDashboard
    dashboard = ServerDashboard(f"http://127.0.0.1:{port}", process=server_process)
    dashboard.start(interval=2)   # auto-refresh without blocking the kernel; dashboard.stop() ends it
    dashboard                     # health, model, KV pool, radix cache, requests, throughput, totals, log

The controls also work alone: ``CacheControls(base_url)``, ``WeightControls(base_url)``,
``ChatPlayground(base_url)``. Every request has a timeout; an unreachable server shows in the widget.
"""

from sglkit.widgets.chat import ChatPlayground
from sglkit.widgets.client import Reply, RequestFailed, ServerClient
from sglkit.widgets.controls import ActionResult, CacheControls, WeightControls
from sglkit.widgets.dashboard import ServerDashboard
from sglkit.widgets.sparkline import Sparkline, sparkline_svg

__all__ = [
    "ActionResult",
    "CacheControls",
    "ChatPlayground",
    "Reply",
    "RequestFailed",
    "ServerClient",
    "ServerDashboard",
    "Sparkline",
    "WeightControls",
    "sparkline_svg",
]
