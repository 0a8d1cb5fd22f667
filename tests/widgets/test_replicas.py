"""The dashboard's data-parallel panel (sglkit/widgets/replicas.py) from a stats snapshot: no server needed."""

from __future__ import annotations

from sglkit.widgets import ServerDashboard
from sglkit.widgets.replicas import replica_lines, replicas_html

DP_STATS = {
    "num_running_reqs": 3,
    "cache_hit_rate": 0.5,
    "replicas": [
        {
            "dp_rank": 0,
            "num_running_reqs": 2,
            "num_queue_reqs": 1,
            "cache_hit_rate": 0.75,
            "num_finished_reqs": 9,
        },
        {
            "dp_rank": 1,
            "num_running_reqs": 1,
            "num_queue_reqs": 0,
            "cache_hit_rate": 0.25,
            "num_finished_reqs": 4,
        },
    ],
    "router": {"load_balance_method": "cache_aware", "decisions": {"prefix": 10, "load": 3}},
}


def test_panel_has_one_row_per_replica_and_the_router():
    text = replicas_html(DP_STATS)
    assert text.count("<tr class='sglkit-replica'>") == 2
    assert "DP0" in text and "75.0%" in text and "25.0%" in text
    assert "cache_aware (load 3, prefix 10)" in text
    lines = replica_lines(DP_STATS)
    assert lines[0] == "  replicas: 2, router: cache_aware (load 3, prefix 10)"
    assert lines[1].startswith("    DP0: 2 running, 1 queued") and "cache hit rate 75.0%" in lines[1]


def test_no_replicas_no_panel():
    assert replicas_html({"num_running_reqs": 1}) == "" and replica_lines({}) == []


def test_dashboard_shows_the_panel_only_with_replicas():
    dashboard = ServerDashboard("http://127.0.0.1:9", chat=False, refresh=False)
    try:
        assert dashboard.replicas_html.layout.display == "none"
        dashboard.stats = DP_STATS
        dashboard._draw()
        assert dashboard.replicas_html.layout.display is None
        assert "Data-parallel replicas (2)" in dashboard.replicas_html.value
        assert "DP1: 1 running, 0 queued" in repr(dashboard)
        dashboard.stats = {"num_running_reqs": 0}
        dashboard._draw()
        assert dashboard.replicas_html.layout.display == "none"
    finally:
        dashboard.close()
