"""python -m sglkit.bench_one_batch on the tiny shape (CPU): SGLang's printed lines, the figures, --compare-hf."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from sglkit.bench.one_batch import PRESETS, parse_args, run, write_preset

FLOAT = r"\s*[0-9.]+"
SGLANG_LINES = [
    rf"^Prefill\. latency:{FLOAT} s, throughput:{FLOAT} token/s$",
    rf"^Decode 0\. Batch size: \d+, latency:{FLOAT} s, throughput:{FLOAT} token/s$",
    rf"^Decode\.  median latency:{FLOAT} s, median throughput:{FLOAT} token/s$",
    rf"^Total\. latency:{FLOAT} s, throughput:{FLOAT} token/s$",
]


def test_cli_prints_sglang_lines_per_batch_size(tmp_path):
    results = tmp_path / "result.jsonl"
    cmd = [sys.executable, "-m", "sglkit.bench_one_batch", "--config", "tiny", "--batch-size", "1", "3"]
    cmd += ["--input-len", "16", "--output-len", "4", "--result-filename", str(results)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=True).stdout
    lines = out.splitlines()
    assert "Warmup ..." in lines and "Benchmark ..." in lines
    for pattern in SGLANG_LINES:
        assert len([line for line in lines if re.match(pattern, line)]) == 2, (pattern, out)
    assert "Decode 0. Batch size: 3," in out and "Decode 3." not in out  # output_len 4: 3 decode steps
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["batch_size"], r["input_len"], r["output_len"]) for r in rows] == [(1, 16, 4), (3, 16, 4)]
    assert all(r["prefill_throughput"] > 0 and r["median_decode_throughput"] > 0 for r in rows)


def test_compare_hf_same_weights_same_tokens():
    lines: list[str] = []
    args = parse_args(["--config", "tiny", "--batch-size", "2", "--input-len", "24", "--output-len", "5"])
    args.compare_hf = True
    (result,) = run(args, log=lines.append)
    text = "\n".join(lines)
    assert re.search(rf"^HF\. Prefill\. latency:{FLOAT} s", text, re.M)
    assert re.search(rf"^HF\. Decode\.  median latency:{FLOAT} s", text, re.M)
    ratio = re.search(
        r"^Ratio \(sglkit / HF\)\. prefill throughput: ([0-9.]+)x, median decode throughput: ", text, re.M
    )
    assert ratio and float(ratio.group(1)) > 0
    assert set(result["ratio_vs_hf"]) == {"prefill", "decode"}
    # float32 on CPU, the same weights: the greedy continuations agree
    assert result["same_last_tokens_as_hf"] is True and len(result["output_ids"]) == 2


def test_presets_and_arguments(tmp_path):
    assert PRESETS["8b-shape"]["hidden_size"] == 4096 and PRESETS["8b-shape"]["vocab_size"] == 128256
    assert PRESETS["8b-shape"]["rope_parameters"]["rope_type"] == "llama3"
    assert (PRESETS["small"]["num_attention_heads"], PRESETS["small"]["num_key_value_heads"]) == (15, 5)
    folder = write_preset("tiny", tmp_path / "tiny")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and (folder / "tokenizer.json").is_file()
    assert not list(folder.glob("*.safetensors"))
    assert parse_args(["--config", "tiny"]).load_format == "dummy"
    with pytest.raises(SystemExit):
        parse_args(["--config", "tiny", "--model-path", "x"])
    with pytest.raises(ValueError, match="Unknown --config"):
        write_preset("70b", tmp_path / "x")
