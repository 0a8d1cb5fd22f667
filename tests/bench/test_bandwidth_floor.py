"""python -m sglkit.bench.bandwidth_floor on a tiny model: the bytes a decode step reads (every linear's held
form, the head, the KV), a read loop's rate, a round of read / decode / read with floor / step, and the
arguments checked."""

from __future__ import annotations

import pytest

from sglkit.bench import bandwidth_floor as bench
from sglkit.runtime.executor.model_runner import ModelRunner
from tests.runtime.executor.graph_cases import tiny_server_args


def test_decode_step_bytes_counts_weights_head_and_kv(llama_path):
    runner = ModelRunner(tiny_server_args(llama_path, "torch_native"))
    model = runner.model
    params = sum(
        p.numel() for name, p in model.named_parameters() if "embed_tokens" not in name and "norm" not in name
    )
    weights = bench.decode_step_bytes(runner, 0)
    assert weights >= params * 4  # float32; blocked copies may pad rows up to a block
    pool = runner.token_to_kv_pool
    k_buf, _ = pool.get_kv_buffer(0)
    per_token = 2 * k_buf[0].numel() * k_buf.element_size() * pool.num_layers
    assert bench.decode_step_bytes(runner, 10) - weights == 10 * per_token


def test_read_rate_is_a_positive_rate():
    assert bench.read_rate(1 << 20, passes=2) > 0


def test_one_round_on_a_tiny_model(llama_path):
    args = bench.parse_args(
        ["--model-path", llama_path, "--prompt-len", "8", "--decode-len", "4", "--rounds", "1"]
    )
    lines: list[str] = []
    result = bench.run(args, llama_path, log=lines.append)
    (round_,) = result["rounds"]
    assert round_["step_ms"] > 0 and round_["floor_ms"] > 0 and round_["read_gbps_before"] > 0
    assert result["floor_over_step"] == pytest.approx(round_["floor_ms"] / round_["step_ms"])
    assert lines[0].startswith("round 1: read") and "of the bandwidth" in lines[0]
    assert "read per step" in lines[-1]


def test_arguments():
    with pytest.raises(SystemExit):
        bench.parse_args([])  # a model is required
    args = bench.parse_args(["--model-shape", "small"])
    assert (args.dtype, args.rounds, args.decode_len, args.threads) == ("bfloat16", 3, 128, 2)
    with pytest.raises(SystemExit, match="at least 2"):
        bench.run(bench.parse_args(["--model-path", "x", "--decode-len", "1"]), "x")
