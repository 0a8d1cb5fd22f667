"""scripts/gpu_check.sh --dry-run: the whole GPU check on CPU with the tiny shape, with fastapi/zmq unimportable
(the GPU machine has neither), writing its JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCKER = """
import importlib.abc, sys

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastapi", "zmq", "uvicorn", "starlette"):
            raise ImportError(f"{name} is not on the GPU machine")
        return None

sys.meta_path.insert(0, _Absent())
"""


def test_dry_run_end_to_end_without_server_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "report" / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(site)}
    env.pop("OUT", None)
    cmd = [str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["elapsed_s"] < 60
    assert report["environment"]["torch"] == __import__("torch").__version__
    assert report["backends"]["torch_native"] == "available"
    assert report["backends"]["flashinfer"].startswith("unavailable")
    check = report["correctness"]["torch_native"]
    assert check["passed"] and check["token_agreement"] == 1.0 and check["logits_max_abs_diff"] < 1e-3
    speed = report["speed"]
    for key in ("batch_1", "batch_4"):
        figures = speed["eager torch_native"][key]
        assert figures["median_decode_throughput"] > 0 and figures["prefill_latency"] > 0
        assert set(figures["ratio_vs_hf"]) == {"prefill", "decode"}
        assert speed["hf"][key]["median_decode_throughput"] > 0
    assert set(speed["eager torch_native, torch ops"]) == {"batch_1"}
    assert isinstance(speed["graph+triton"], str) and isinstance(speed["eager triton"], str)  # not on CPU
    assert "Decode.  median latency:" in result.stdout and f"wrote {out}" in result.stdout
