"""python -m sglkit.bench.quant_accuracy (in process, tiny model): one row per configuration against bf16, bf16
itself exact, the quantized rows smaller and close, the JSON written."""

from __future__ import annotations

import json

from sglkit.bench import quant_accuracy


def test_rows_against_bf16(llama_path, tmp_path):
    out = tmp_path / "rows.json"
    lines: list[str] = []
    argv = ["--model-path", llama_path, "--num-prompts", "3", "--output-len", "4"]
    argv += ["--configs", "fp32", "int8wo", "--json", str(out)]
    rows = quant_accuracy.run(quant_accuracy.parse_args(argv), log=lines.append)
    assert [r.config for r in rows] == ["bf16", "fp32", "int8wo"]
    bf16, fp32, int8 = rows
    assert (bf16.top1_agreement, bf16.max_abs_logit_error, bf16.greedy_exact_prompts) == (1.0, 0.0, 1.0)
    assert fp32.linear_weight_mib > bf16.linear_weight_mib > int8.linear_weight_mib
    assert int8.top1_agreement >= 0.8 and 0 < int8.mean_abs_logit_error < 0.5
    assert 0.0 <= int8.greedy_token_agreement <= 1.0
    assert json.loads(out.read_text())[2]["config"] == "int8wo"
    assert lines[1].split()[:3] == ["config", "linear", "MiB"] and lines[-1].startswith("int8wo")
