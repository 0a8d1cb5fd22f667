"""bench_offline_throughput's constrained workload (--json-schema) on a tiny model: it runs and reports."""

from __future__ import annotations

import json

from sglkit.bench import offline_throughput
from sglkit.bench.constrained import bench_schema


def test_bench_schema_has_thirty_required_properties():
    schema = bench_schema()
    assert len(schema["properties"]) == 30 and schema["required"] == sorted(schema["properties"])


def test_json_schema_workload_reports_ratio_and_compile_times(llama_path, tmp_path, capsys):
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "b": {"type": "boolean"}},
        "required": ["a", "b"],
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    offline_throughput.main(
        [
            "--model-path",
            llama_path,
            "--num-prompts",
            "3",
            "--input-len",
            "8",
            "--output-len",
            "64",
            "--json-schema",
            str(path),
        ]
    )
    out = capsys.readouterr().out
    assert "grammar compile (2 properties): first" in out
    assert "valid JSON outputs: 3/3" in out
    assert "output throughput ratio constrained / unconstrained:" in out
