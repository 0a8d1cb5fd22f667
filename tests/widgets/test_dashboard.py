"""ServerDashboard against real server subprocesses: lifecycle light, live stats, auto-refresh, dead servers."""

from __future__ import annotations

import os
import time

import pytest
import requests

from sglkit.utils import launch_server_cmd, terminate_process, wait_for_server
from sglkit.widgets import ServerDashboard
from sglkit.widgets.client import Reply
from sglkit.widgets.dashboard import classify_health
from tests.widgets.conftest import PROMPT, closed_port_url, long_request, server_info, silent_listener


def wait_until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail after ``timeout`` s (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_lifecycle_starting_ready_stopped_with_api_key(widgets_model_path):
    """Light: starting while the server warms up, ready after, stopped once the Terminate button ran.

    Also: the API key reaches the stats routes, a dashboard without it says why, the log tail is shown.
    """
    os.environ.setdefault("SGLKIT_ECHO_LOGS", "0")
    process, port = launch_server_cmd(
        f"python -m sglkit.launch_server --model-path {widgets_model_path} --max-total-tokens 2048 "
        "--api-key sk-widgets",
        echo=False,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        dashboard = ServerDashboard(base_url, api_key="sk-widgets", process=process, chat=False)
        assert dashboard.state == "starting"  # the server needs seconds to load and warm up
        assert "sglkit-health-starting" in dashboard.health.value
        assert not dashboard.terminate_button.disabled

        wait_for_server(base_url, process=process, api_key="sk-widgets", print_note=False)
        dashboard.refresh()
        assert dashboard.state == "ready", dashboard.detail
        assert dashboard.stats["max_total_num_tokens"] == 2048
        assert dashboard.served_model == widgets_model_path
        assert "sglkit-health-ready" in dashboard.health.value
        assert "<td style='padding:1px 0'><code>set</code>" in dashboard.args_html.value  # api_key masked
        assert "sk-widgets" not in dashboard.args_html.value
        assert "fired up and ready to roll" in dashboard.log_view.value

        keyless = ServerDashboard(base_url, chat=False)
        assert keyless.state == "unhealthy"
        assert "API key" in keyless.detail and keyless.stats == {}

        dashboard.terminate_button.click()
        assert dashboard.wait(timeout=120)
        assert process.poll() is not None
        assert dashboard.state == "stopped"
        assert "sglkit-health-stopped" in dashboard.health.value
        assert dashboard.terminate_button.disabled
        assert dashboard.stats["max_total_num_tokens"] == 2048  # the last statistics stay on screen
        assert "[stopped: server process exited" in repr(dashboard)
    finally:
        terminate_process(process)


def test_refresh_shows_live_stats(widget_server):
    """One refresh = one stats snapshot: running requests, KV usage, totals, throughput chart, text repr."""
    dashboard = ServerDashboard(widget_server.base_url, process=widget_server.process)
    assert dashboard.state == "ready"
    before = dict(dashboard.stats)
    response = requests.post(
        f"{widget_server.base_url}/generate",
        timeout=60,
        json={"text": [PROMPT, "Hello there"], "sampling_params": {"max_new_tokens": 8, "temperature": 0}},
    )
    assert response.status_code == 200
    dashboard.refresh()
    after = dashboard.stats
    assert after["num_finished_reqs"] == before["num_finished_reqs"] + 2
    assert after["num_generated_tokens"] >= before["num_generated_tokens"] + 16
    assert f">{after['num_generated_tokens']:,}</span> generated tokens" in dashboard.totals_html.value
    assert f"{after['num_finished_reqs']:,} finished requests" in dashboard.totals_html.value
    assert len(dashboard.sparkline.history) == 2 and dashboard.sparkline.history[-1] > 0
    assert "<polyline" in dashboard.sparkline.value
    assert "schedule_policy" in dashboard.args_html.value

    with long_request(widget_server.base_url, "widgets-dashboard-long"):
        wait_until(
            lambda: server_info(widget_server.base_url)["num_running_reqs"] == 1, what="a running request"
        )
        dashboard.refresh()
        assert dashboard.stats["num_running_reqs"] == 1
        assert dashboard.stats["num_used_tokens"] > 0
        assert "<span style='font-size:18px'>1</span> running" in dashboard.requests_html.value
        assert dashboard.kv_bar.value == pytest.approx(dashboard.stats["token_usage"])
        text = repr(dashboard)
    assert text.startswith(f"ServerDashboard({widget_server.base_url}) [ready]")
    assert "requests: 1 running, 0 queued" in text
    assert f"/ {dashboard.stats['max_total_num_tokens']:,} tokens" in text
    bundle = dashboard._repr_mimebundle_()
    assert bundle["text/plain"] == text and "application/vnd.jupyter.widget-view+json" in bundle


def test_auto_refresh_starts_and_stops(widget_server):
    """start() refreshes on a background thread while the caller goes on; stop() ends it."""
    dashboard = ServerDashboard(widget_server.base_url, chat=False)
    first = dashboard.num_refreshes
    dashboard.start(interval=0.05)
    assert dashboard.running
    wait_until(lambda: dashboard.num_refreshes >= first + 3, what="three background refreshes")
    assert dashboard.stop() is True
    assert not dashboard.running
    count = dashboard.num_refreshes
    dashboard.refresh()
    assert dashboard.num_refreshes == count + 1  # nothing else refreshes any more
    with pytest.raises(ValueError):
        dashboard.start(interval=0)
    dashboard.close()


def test_unreachable_and_hung_servers_show_in_the_light():
    """No listener -> stopped at once; a listener that never answers -> stopped after the timeout. No raise."""
    dead = ServerDashboard(closed_port_url(), chat=False)
    assert dead.state == "stopped" and "cannot reach" in dead.detail
    assert "no statistics yet" in repr(dead)
    with silent_listener() as url:
        hung = ServerDashboard(url, timeout=0.3, chat=False)
        assert hung.state == "stopped" and "no answer" in hung.detail
        hung.start(interval=0.05)
        assert hung.stop() is True


def test_classify_health_rules():
    """503 / no answer mean starting before the first ready, unhealthy after; URL-only servers stop."""
    unreachable = Reply(False, None, None, "cannot reach")
    assert classify_health(Reply(True, 200), True, False) == ("ready", "")
    assert classify_health(Reply(False, 503), True, False)[0] == "starting"
    assert classify_health(Reply(False, 503), False, True)[0] == "unhealthy"
    assert classify_health(unreachable, True, False)[0] == "starting"
    assert classify_health(unreachable, True, True)[0] == "unhealthy"
    assert classify_health(unreachable, False, True) == ("stopped", "cannot reach")
