"""CudaGraphRunner (sglkit.runtime.executor.cuda_graph_runner) on CPU, with a stand-in for capture/replay.

Bucketing (which captured size a batch pads to), the default --cuda-graph-max-bs, and on a tiny Llama with the
torch_native backend: graph decode == eager decode (logits, greedy tokens, the real rows' KV), padded rows write
only the reserved KV slot 0, batches over the largest size and prefill run eagerly, the capture log lines. The
triton backend's graph hooks and the graph-safety check run under Triton's interpreter in a child pytest
(``test_cuda_graph_triton.py``, started by the last test here).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sglkit.runtime.executor.cuda_graph_buckets import (
    capture_batch_sizes,
    default_cuda_graph_max_bs,
    padded_batch_size,
)
from sglkit.server_args import ServerArgs
from tests.runtime.executor.graph_cases import INPUT_LEN, MAX_BS, greedy, kv_snapshot, make_runner

ROOT = Path(__file__).parents[3]


def test_capture_batch_sizes():
    assert capture_batch_sizes(160) == [1, 2, 4, 8, 16, 24, 32, *range(48, 161, 16)]
    assert capture_batch_sizes(256)[-3:] == [224, 240, 256]
    assert capture_batch_sizes(20) == [1, 2, 4, 8, 16, 20]  # the maximum is always captured
    assert capture_batch_sizes(1) == [1]
    assert capture_batch_sizes(50) == [1, 2, 4, 8, 16, 24, 32, 48, 50]
    with pytest.raises(ValueError, match="cuda_graph_max_bs"):
        capture_batch_sizes(0)


@pytest.mark.parametrize(
    "bs, padded",
    [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16), (17, 24), (25, 32), (33, 48), (160, 160), (161, None)],
)
def test_padded_batch_size(bs, padded):
    assert padded_batch_size(capture_batch_sizes(160), bs) == padded


def test_padded_batch_size_refuses_an_empty_batch():
    assert padded_batch_size([1, 2, 4], 0) is None


@pytest.mark.parametrize(
    "gpu_gb, max_running, expected",
    [(141, None, 256), (80, None, 256), (40, None, 32), (24, None, 48), (16, None, 8), (180, None, 512)]
    + [(None, None, 160), (141, 64, 64)],
)
def test_default_cuda_graph_max_bs(gpu_gb, max_running, expected):
    assert default_cuda_graph_max_bs(gpu_gb, max_running) == expected


def test_server_args_flags():
    args = ServerArgs(model_path="m", disable_cuda_graph=True, cuda_graph_max_bs=24)
    assert args.disable_cuda_graph and args.cuda_graph_max_bs == 24
    with pytest.raises(ValueError, match="cuda_graph_max_bs must be a positive integer"):
        ServerArgs(model_path="m", cuda_graph_max_bs=0)


@pytest.fixture(scope="module")
def runner(llama_path):
    return make_runner(llama_path, "torch_native")


def test_captured_sizes_and_static_buffers(runner):
    graphs = runner.cuda_graph_runner
    assert graphs.capture_bs == [1, 2, 4, 8] and sorted(graphs.graphs) == [1, 2, 4, 8]
    assert all(g.fn is not None for g in graphs.graphs.values())
    assert {bs: tuple(out.shape) for bs, out in graphs.outputs.items()} == {
        bs: (bs, runner.vocab_size) for bs in (1, 2, 4, 8)
    }


@pytest.mark.parametrize("batch_size", [1, 3, 5, 8])
def test_graph_decode_matches_eager(runner, batch_size):
    graphs = runner.cuda_graph_runner
    before = graphs.num_replays
    logits_g, tokens_g, batch, pools_g = greedy(runner, batch_size, use_graph=True)
    assert graphs.num_replays - before == tokens_g.shape[0]  # every decode step replayed a graph
    logits_e, tokens_e, _, pools_e = greedy(runner, batch_size, use_graph=False)
    assert logits_g.shape == logits_e.shape == (tokens_g.shape[0], batch_size, runner.vocab_size)
    assert torch.equal(tokens_g, tokens_e)
    torch.testing.assert_close(logits_g, logits_e, rtol=1e-5, atol=1e-5)
    for step, (step_g, step_e) in enumerate(zip(pools_g, pools_e, strict=True)):
        slots = batch.locs[:, : INPUT_LEN + step + 1].flatten()  # the real rows' KV so far (never slot 0)
        for buf_g, buf_e in zip(step_g, step_e, strict=True):
            torch.testing.assert_close(buf_g[slots], buf_e[slots], rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_padded_rows_write_only_slot_0(runner):
    from sglkit.bench.one_batch import StaticBatch

    batch = StaticBatch(runner, 3, INPUT_LEN, 4, seed=1)  # pads to 4 rows
    ids = runner.forward(batch.prefill()).argmax(-1)
    pool = runner.token_to_kv_pool
    written = set(batch.decode_locs[:, 0].tolist())
    for layer in range(pool.num_layers):
        for buf in pool.get_kv_buffer(layer):
            buf[[0, *written]] = 1234.5  # a value no write reproduces
    before = kv_snapshot(runner)
    runner.forward(batch.decode(0, ids))
    after = kv_snapshot(runner)
    for old, new in zip(before, after, strict=True):
        changed = (old != new).flatten(1).any(dim=1).nonzero().flatten().tolist()
        assert set(changed) == written | {0}


@torch.inference_mode()
def test_full_batch_without_padding_leaves_slot_0(runner):
    from sglkit.bench.one_batch import StaticBatch

    batch = StaticBatch(runner, 4, INPUT_LEN, 4, seed=2)
    ids = runner.forward(batch.prefill()).argmax(-1)
    before = kv_snapshot(runner)
    runner.forward(batch.decode(0, ids))
    for old, new in zip(before, kv_snapshot(runner), strict=True):
        assert torch.equal(old[0], new[0])


def test_prefill_and_oversized_batches_run_eagerly(runner):
    graphs = runner.cuda_graph_runner
    before = graphs.num_replays
    logits_g, tokens_g, _, _ = greedy(runner, MAX_BS + 1, use_graph=True)  # 9 rows: no graph that large
    assert graphs.num_replays == before
    _, tokens_e, _, _ = greedy(runner, MAX_BS + 1, use_graph=False)
    assert torch.equal(tokens_g, tokens_e)


def test_replayed_logits_are_a_copy(runner):
    _, _, batch, _ = greedy(runner, 2, use_graph=True)
    graphs = runner.cuda_graph_runner
    with torch.inference_mode():
        out = runner.forward(batch.decode(0, torch.zeros(2, dtype=torch.int64)))
    assert out.data_ptr() != graphs.outputs[2].data_ptr()


def test_capture_logs_sglangs_lines(llama_path, caplog):
    with caplog.at_level(logging.INFO, logger="sglkit.runtime.executor.cuda_graph_runner"):
        make_runner(llama_path, "torch_native", max_bs=2)
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("cuda_graph_runner")]
    assert messages[0] == "Capture cuda graph begin. This can take up to several minutes."
    assert messages[1].startswith("Capture cuda graph end. Time elapsed: ") and messages[1].endswith(" s")


def test_graphs_only_on_cuda_with_a_graph_safe_backend(runner):
    assert not runner.attn_backend.supports_cuda_graph
    runner.server_args.disable_cuda_graph = False
    assert not runner.cuda_graphs_wanted()  # CPU


def test_triton_graph_hooks_and_graph_safety_under_the_interpreter():
    """Re-runs test_cuda_graph_triton.py in a fresh interpreter with TRITON_INTERPRET=1 from the start."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("test_cuda_graph_triton.py runs directly in this process")
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/runtime/executor/test_cuda_graph_triton.py",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert "passed" in summary and "skipped" not in summary, summary
