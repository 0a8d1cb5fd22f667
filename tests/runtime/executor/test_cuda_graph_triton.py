"""The CUDA-graph runner with the triton backend: graph hooks vs eager triton, and the graph-safety check.

Runs under Triton's interpreter on CPU (test_cuda_graph_runner.py re-runs this file in a child process with
``TRITON_INTERPRET=1`` set from the start). Graph safety: what a graph captures (the decode forward of the
model with the triton backend, its metadata prepared outside by the replay hook) runs under ``no_host_sync()``,
which raises on any op that would make the host wait for the GPU; a deliberately bad op in the decode path is
caught.
"""

from __future__ import annotations

import os

import pytest
import torch

from sglkit.runtime.executor.cuda_graph_runner import EagerReplayGraph
from tests.runtime.executor.graph_cases import INPUT_LEN, greedy, make_runner
from tests.runtime.executor.host_sync import HostSyncError, no_host_sync

pytest.importorskip("triton")
pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="runs under TRITON_INTERPRET=1 in a child process (test_cuda_graph_runner.py)",
)


class SyncCheckedGraph(EagerReplayGraph):
    """The CPU stand-in whose captured work (and each replay) runs under ``no_host_sync()``."""

    def capture(self, fn):
        with no_host_sync():
            return super().capture(fn)

    def replay(self) -> None:
        with no_host_sync():
            super().replay()


@pytest.fixture(scope="module")
def runner(llama_path):
    return make_runner(llama_path, "triton", max_bs=4)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_triton_graph_decode_matches_eager(runner, batch_size):
    before = runner.cuda_graph_runner.num_replays
    logits_g, tokens_g, _, _ = greedy(runner, batch_size, use_graph=True)
    assert runner.cuda_graph_runner.num_replays - before == tokens_g.shape[0]
    logits_e, tokens_e, _, _ = greedy(runner, batch_size, use_graph=False)
    assert torch.equal(tokens_g, tokens_e)
    torch.testing.assert_close(logits_g, logits_e, rtol=1e-5, atol=1e-5)


def test_triton_graph_metadata_lives_in_preallocated_buffers(runner):
    backend, graphs = runner.attn_backend, runner.cuda_graph_runner
    greedy(runner, 3, use_graph=True)
    meta = graphs.batches[4].attn_metadata
    assert meta is backend.graph_metadata[4]  # the object captured with the graph, refilled in place
    assert meta.kv_indptr.data_ptr() == backend.graph_kv_indptr.data_ptr()
    assert meta.kv_indices.data_ptr() == backend.graph_kv_indices.data_ptr()
    assert meta.num_kv_splits.data_ptr() == backend.graph_num_kv_splits.data_ptr()
    (part_out, part_lse), (flat_out, flat_lse) = (
        next(iter(meta.workspaces.values())),
        next(iter(backend.graph_workspaces.values())),
    )
    assert part_out.data_ptr() == flat_out.data_ptr() and part_lse.data_ptr() == flat_lse.data_ptr()
    # Three real rows of length INPUT_LEN + OUTPUT_LEN - 1 after the last step, one padded row of length 1.
    lengths = (meta.kv_indptr[1:] - meta.kv_indptr[:-1]).tolist()
    assert lengths[3] == 1 and lengths[:3] == [lengths[0]] * 3 and lengths[0] > INPUT_LEN


def test_captured_triton_decode_has_no_host_sync(llama_path):
    graph_runner = make_runner(llama_path, "triton", max_bs=2, graph_factory=SyncCheckedGraph)
    before = graph_runner.cuda_graph_runner.num_replays
    _, tokens, _, _ = greedy(graph_runner, 2, use_graph=True)  # captures and replays under the check
    assert graph_runner.cuda_graph_runner.num_replays - before == tokens.shape[0]


BAD_OPS = {
    "item": lambda t: t.max().item(),
    "int": lambda t: int(t[0]),
    "bool": lambda t: bool((t > 0).all()),
    "tolist": lambda t: t.tolist(),
    "nonzero": lambda t: torch.nonzero(t),
    "mask_index": lambda t: t[t > 1],
    "cpu": lambda t: t.cpu(),
}


@pytest.mark.parametrize("name", sorted(BAD_OPS))
def test_a_host_sync_in_the_decode_path_is_caught(runner, monkeypatch, name):
    backend = runner.attn_backend
    decode = type(backend).forward_decode

    def bad_decode(self, q, layer, forward_batch):
        BAD_OPS[name](forward_batch.seq_lens)  # e.g. someone reads a length on the host
        return decode(self, q, layer, forward_batch)

    monkeypatch.setattr(type(backend), "forward_decode", bad_decode)
    with pytest.raises(HostSyncError, match="host sync"):
        runner.init_cuda_graphs(graph_factory=SyncCheckedGraph, max_bs=1, show_progress=False)
