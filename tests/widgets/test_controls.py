"""CacheControls and WeightControls pressed with .click() against a real server."""

from __future__ import annotations

from sglkit.widgets import CacheControls, ServerDashboard, WeightControls
from tests.widgets.conftest import PROMPT, closed_port_url, greedy_ids, long_request, server_info


def test_flush_button_empties_the_radix_cache(widget_server):
    greedy_ids(widget_server.base_url, PROMPT)
    assert server_info(widget_server.base_url)["num_cached_tokens"] > 0
    controls = CacheControls(widget_server.base_url)
    controls.button.click()
    assert controls.wait(timeout=60)
    result = controls.last_result
    assert result.ok and result.status == 200
    assert server_info(widget_server.base_url)["num_cached_tokens"] == 0
    assert result.details["before"] > 0 and result.details["after"] == 0
    assert "Cache flushed." in controls.status.value
    assert not controls.button.disabled


def test_flush_refused_while_busy_shows_the_reason(widget_server):
    controls = CacheControls(widget_server.base_url)
    with long_request(widget_server.base_url, "widgets-flush-busy"):
        result = controls.flush()
    assert not result.ok and result.status == 400
    assert "Cache not flushed because there are pending requests" in result.message
    assert "#running-req: 1" in controls.status.value


def test_flush_from_the_dashboard_redraws_it(widget_server):
    greedy_ids(widget_server.base_url, "Some words to cache")
    dashboard = ServerDashboard(widget_server.base_url, chat=False)
    assert dashboard.stats["num_cached_tokens"] > 0
    count = dashboard.num_refreshes
    dashboard.cache_controls.button.click()
    assert dashboard.wait(timeout=60)
    assert dashboard.num_refreshes > count
    assert dashboard.stats["num_cached_tokens"] == 0
    assert "<span class='sglkit-cached-tokens'>0</span>" in dashboard.cache_text.value


def test_update_to_other_size_fails_and_keeps_serving(
    widget_server, widgets_model_path, other_size_model_path
):
    original = greedy_ids(widget_server.base_url)
    controls = WeightControls(widget_server.base_url)
    controls.path.value = other_size_model_path
    controls.button.click()
    assert controls.wait(timeout=300)
    result = controls.last_result
    assert not result.ok and result.status == 400
    assert result.message.startswith("Failed to update weights:")
    assert "Rolling back to original weights." in controls.status.value
    assert f"The server keeps serving {widgets_model_path}." in controls.status.value
    assert controls.served_model == widgets_model_path
    assert greedy_ids(widget_server.base_url) == original


def test_update_to_same_shape_changes_outputs(widget_server, widgets_model_path, same_shape_model_path):
    original = greedy_ids(widget_server.base_url)
    controls = WeightControls(widget_server.base_url)
    try:
        controls.path.value = same_shape_model_path
        controls.button.click()
        assert controls.wait(timeout=300)
        assert controls.last_result.ok, controls.last_result.message
        assert "Succeeded to update model weights." in controls.status.value
        assert f"<code>{same_shape_model_path}</code>" in controls.serving.value
        assert greedy_ids(widget_server.base_url) != original
    finally:
        restored = controls.update(widgets_model_path)
    assert restored.ok
    assert controls.served_model == widgets_model_path
    assert greedy_ids(widget_server.base_url) == original


def test_controls_on_a_dead_server_say_so():
    url = closed_port_url()
    cache = CacheControls(url)
    assert cache.flush().message.startswith("Server unreachable: cannot reach")
    weights = WeightControls(url)
    result = weights.update("/some/checkpoint")
    assert not result.ok and "Server unreachable" in weights.status.value
    assert "Serving: unknown" in weights.serving.value
    assert not weights.update("  ").ok  # an empty path sends nothing
