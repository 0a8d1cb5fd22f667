"""python -m sglkit.bench.startup: a real server launched, found healthy, its milestones timed, its tree gone."""

from __future__ import annotations

import psutil

from sglkit.bench.startup import MILESTONES, main


def test_one_round_times_the_launch_and_leaves_nothing_running(capsys):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    (result,) = main(["--rounds", "1", "--timeout", "90"])
    assert result["ready_s"] is not None and result["ready_s"] > 0
    seen = [next(m for m in MILESTONES if m in line) for _, line in result["timeline"]]
    assert "Load weight end" in seen and "Uvicorn running" in seen
    times = [seconds for seconds, _ in result["timeline"]]
    assert times == sorted(times) and times[0] < result["ready_s"] + 5
    assert "round 1: ready in" in capsys.readouterr().out
    after = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()}
    assert after <= before
