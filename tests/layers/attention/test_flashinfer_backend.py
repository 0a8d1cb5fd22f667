"""FlashInferAttnBackend (sglkit.layers.attention.flashinfer_backend) and its metadata, mostly without flashinfer.

flashinfer needs CUDA, so on CPU: (1) the page table and plan arguments sglkit builds (``flashinfer_metadata``)
are fed to a float64 implementation of FlashInfer's documented paged-attention contract
(``flashinfer_reference.paged_attention``) and must give torch_native's output on the same pool: GQA 1/4/8,
sliding window, soft cap, prefix / no prefix, chunked prefill, padded graph rows, shuffled slots; (2) the whole
backend runs with a stand-in ``flashinfer`` module that enforces the documented rules and computes by the
contract (plan once per pass per layer spec, run per layer, fixed CUDA-graph buffers re-planned outside the
graph), through RadixAttention and through the model runner's CUDA-graph runner; (3) the factory's errors.
Tests marked ``gpu`` run the real package against the triton backend when CUDA and flashinfer are there.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from sglkit.core.forward_batch import ForwardBatch, ForwardMode
from sglkit.layers.attention import create_attention_backend
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.attention.flashinfer_metadata import (
    build_paged_kv,
    decode_plan_args,
    extend_plan_args,
    layer_spec,
    paged_kv_cache,
)
from sglkit.layers.attention.torch_native import TorchNativeAttnBackend
from tests.layers.attention.flashinfer_cases import (
    HEAD_DIM,
    NUM_KV_HEADS,
    make_batch,
    qkv_maker,
    run_layer,
    static_decode_batch,
    twin_pools,
)
from tests.layers.attention.flashinfer_reference import paged_attention, standin_module
from tests.layers.attention.triton_cases import DEVICE, MAX_CONTEXT, SCALING, make_paged, reference

SMALL_WORKSPACE = 1 << 16  # the stand-in never writes the workspace; the real default is 128 MB
OPTIONS = [(1, {}), (4, {}), (8, {}), (4, {"sliding_window": 24}), (4, {"logit_cap": 1.5})]
OPTION_IDS = ["mha", "gqa4", "gqa8", "window", "softcap"]
PROMPT_LENS, CACHED = [1, 31, 33, 70], [0, 0, 32, 40]  # requests 2 and 3 extend a prefix already in the pool
DECODE_STEPS = 3

HAS_REAL_FLASHINFER = torch.cuda.is_available() and importlib.util.find_spec("flashinfer") is not None
needs_flashinfer = pytest.mark.skipif(
    not HAS_REAL_FLASHINFER, reason="needs CUDA and the flashinfer package (pip install 'sglkit[flashinfer]')"
)


@pytest.fixture
def standin(monkeypatch):
    """The stand-in ``flashinfer`` module, installed for this test only."""
    module = standin_module()
    monkeypatch.setitem(sys.modules, "flashinfer", module)
    return module


def contract_output(batch: ForwardBatch, layer: RadixAttention, q: torch.Tensor, kv_indices_out=None):
    """q: [N, Hq, D] -> [N, Hq, D] float64: what FlashInfer computes from the plan() arguments sglkit builds."""
    pool = batch.token_to_kv_pool
    is_decode = batch.forward_mode.is_decode()
    paged = build_paged_kv(
        batch.req_to_token_pool.req_to_token,
        batch.req_pool_indices,
        batch.seq_lens_cpu,
        None if is_decode else batch.extend_seq_lens_cpu,
        kv_indices_out,
    )
    spec = layer_spec(layer)
    if is_decode:
        args, kw = decode_plan_args(spec, paged, pool.dtype)
        (kv_indptr, kv_indices, last, heads, kv_heads, head_dim, page_size), causal = args, False
        qo_indptr = torch.arange(len(last) + 1, dtype=torch.int32)  # the decode kernel's one row each
    else:
        args, kw = extend_plan_args(spec, paged, pool.dtype)
        qo_indptr, kv_indptr, kv_indices, last, heads, kv_heads, head_dim, page_size = args
        causal = kw["causal"]
    assert (page_size, heads, kv_heads, head_dim) == (1, layer.num_heads, layer.num_kv_heads, layer.head_dim)
    assert kw["q_data_type"] == kw["kv_data_type"] == pool.dtype
    k_pages, v_pages = paged_kv_cache(*pool.get_kv_buffer(layer.layer_id))
    return paged_attention(
        q.to(pool.dtype),
        k_pages,
        v_pages,
        qo_indptr,
        kv_indptr,
        kv_indices,
        last,
        causal=causal,
        sm_scale=kw["sm_scale"],
        window_left=kw["window_left"],
        logits_soft_cap=kw["logits_soft_cap"],
    )


def passes(prompt_lens=PROMPT_LENS, cached=CACHED, steps=DECODE_STEPS):
    """(mode, reqs, prefix_lens, ext_lens) of: the cached prefixes' own prefill, the prefill of every request
    over its cached prefix, then decode steps."""
    yield ForwardMode.EXTEND, [2, 3], [0, 0], cached[2:]
    yield ForwardMode.EXTEND, [0, 1, 2, 3], cached, [n - c for n, c in zip(prompt_lens, cached)]
    for step in range(steps):
        yield ForwardMode.DECODE, [0, 1, 2, 3], [n + step for n in prompt_lens], [1] * 4


# ----- (1) sglkit's arrays under FlashInfer's documented contract -----
def test_page_table_follows_req_to_token():
    paged = make_paged(NUM_KV_HEADS, HEAD_DIM, torch.float32, seed=3)
    reqs = [paged.add_request(n) for n in (5, 1, 9)]
    batch = make_batch(paged, None, ForwardMode.EXTEND, reqs, [2, 0, 4], [3, 1, 5])
    table = build_paged_kv(paged.r2t.req_to_token, batch.req_pool_indices, batch.seq_lens_cpu, [3, 1, 5])
    assert table.qo_indptr.tolist() == [0, 3, 4, 9] and table.kv_indptr.tolist() == [0, 5, 6, 15]
    assert table.kv_indices.tolist() == paged.kv[0] + paged.kv[1] + paged.kv[2]  # shuffled slots, in order
    assert table.kv_last_page_len.tolist() == [1, 1, 1]
    for t in (table.qo_indptr, table.kv_indptr, table.kv_indices, table.kv_last_page_len):
        assert t.dtype == torch.int32
    assert table.kv_indices.device == paged.r2t.req_to_token.device
    decode = build_paged_kv(paged.r2t.req_to_token, batch.req_pool_indices, [6, 2, 10])
    assert decode.qo_indptr.tolist() == [0, 1, 2, 3] and decode.kv_indptr.tolist() == [0, 6, 8, 18]


def test_layer_spec_plan_arguments():
    plain = layer_spec(RadixAttention(0, 8, 2, 64, 0.125))
    assert (plain.window_left, plain.logits_soft_cap, plain.sm_scale) == (-1, None, 0.125)
    assert plain.use_tensor_cores and not layer_spec(RadixAttention(0, 4, 2, 64, 0.1)).use_tensor_cores
    assert layer_spec(RadixAttention(5, 8, 2, 64, 0.125)) == plain  # one plan serves equal layers
    windowed = layer_spec(RadixAttention(1, 8, 2, 64, 0.125, sliding_window=4096, logit_cap=50.0))
    assert (windowed.window_left, windowed.logits_soft_cap) == (4095, 50.0)  # the window counts the query


@pytest.mark.parametrize("group, options", OPTIONS, ids=OPTION_IDS)
def test_contract_over_sglkit_arrays_matches_torch_native(group, options):
    paged = make_paged(NUM_KV_HEADS, HEAD_DIM, torch.float32, seed=11)
    for n in PROMPT_LENS:
        paged.add_request(n + DECODE_STEPS)
    layer = RadixAttention(0, NUM_KV_HEADS * group, NUM_KV_HEADS, HEAD_DIM, SCALING, **options)
    native, qkv = TorchNativeAttnBackend(), qkv_maker(layer.num_heads, torch.float32)
    for mode, reqs, prefix_lens, ext_lens in passes():
        q, k, v = qkv(sum(ext_lens))
        batch = make_batch(paged, native, mode, reqs, prefix_lens, ext_lens)
        native.init_forward_metadata(batch)
        expected = layer(q.flatten(1), k.flatten(1), v.flatten(1), batch).view_as(q)  # stores K/V, attends
        got = contract_output(batch, layer, q)
        torch.testing.assert_close(got, expected.double().cpu(), atol=1e-5, rtol=1e-5)


def test_chunked_prefill_equals_one_prefill():
    paged = make_paged(NUM_KV_HEADS, HEAD_DIM, torch.float32, seed=5)
    req = paged.add_request(70)
    layer = RadixAttention(0, 8, NUM_KV_HEADS, HEAD_DIM, SCALING, sliding_window=24)
    q, k, v = qkv_maker(8, torch.float32)(70)
    whole = make_batch(paged, None, ForwardMode.EXTEND, [req], [0], [70])
    paged.pool.set_kv_buffer(0, whole.out_cache_loc, k, v)
    expected = contract_output(whole, layer, q)
    anchor = reference(paged, req, q, list(range(70)), sliding_window=24)  # positions, not arrays
    torch.testing.assert_close(expected, anchor)
    for start, end in [(0, 30), (30, 50), (50, 70)]:
        chunk = make_batch(paged, None, ForwardMode.EXTEND, [req], [start], [end - start])
        torch.testing.assert_close(contract_output(chunk, layer, q[start:end]), expected[start:end])


def test_padded_decode_rows_in_fixed_graph_buffers():
    """As the CUDA-graph runner pads: rows past the real ones read request row 0 with length 1; kv_indices goes
    into the graph's buffer; a later, shorter step leaves a stale tail that nothing reads."""
    paged = make_paged(NUM_KV_HEADS, HEAD_DIM, torch.float32, seed=8)
    for n in (40, 7, 90, 12):
        paged.add_request(n)
    layer = RadixAttention(0, 8, NUM_KV_HEADS, HEAD_DIM, SCALING)
    buffer = torch.full((4 * MAX_CONTEXT,), -7, dtype=torch.int32, device=DEVICE)
    native, qkv = TorchNativeAttnBackend(), qkv_maker(8, torch.float32)
    for reqs, lens in [([0, 2, 3], [40, 90, 12]), ([1, 3], [7, 11])]:
        real = make_batch(paged, native, ForwardMode.DECODE, reqs, [n - 1 for n in lens], [1] * len(reqs))
        q = qkv(len(reqs))[0]
        native.init_forward_metadata(real)
        expected = native.forward_decode(q, layer, real)
        pad = 4 - len(reqs)
        padded = static_decode_batch(paged, native, reqs, lens, 4)
        q_padded = torch.cat([q, torch.randn(pad, 8, HEAD_DIM, device=DEVICE)])
        got = contract_output(padded, layer, q_padded, kv_indices_out=buffer)
        torch.testing.assert_close(got[: len(reqs)], expected.double().cpu(), atol=1e-5, rtol=1e-5)
        assert buffer[sum(lens) : sum(lens) + pad].tolist() == [int(paged.r2t.req_to_token[0, 0])] * pad
    assert buffer[7 + 11 + 2 : 40 + 90 + 12 + 1].ne(-7).all()  # the first step's tail, never cleared or read


# ----- (2) the backend, with the stand-in package -----
@pytest.mark.parametrize("group, options", OPTIONS, ids=OPTION_IDS)
def test_backend_with_standin_matches_torch_native(standin, group, options):
    from sglkit.layers.attention.flashinfer_backend import FlashInferAttnBackend

    dtype = torch.float16
    pools = twin_pools(dtype, [n + DECODE_STEPS for n in PROMPT_LENS], num_layers=3)
    # Two layers of one spec (one plan serves both) and a plain one (a second spec unless options are off).
    heads = NUM_KV_HEADS * group
    layers = [RadixAttention(i, heads, NUM_KV_HEADS, HEAD_DIM, SCALING, **options) for i in (0, 1)]
    layers.append(RadixAttention(2, heads, NUM_KV_HEADS, HEAD_DIM, SCALING))
    specs = {layer_spec(layer) for layer in layers}
    backends = [TorchNativeAttnBackend(), FlashInferAttnBackend(DEVICE, workspace_bytes=SMALL_WORKSPACE)]
    flash = backends[1]
    qkv = qkv_maker(layers[0].num_heads, dtype)
    for num_pass, (mode, reqs, prefix_lens, ext_lens) in enumerate(passes()):
        inputs = [qkv(sum(ext_lens)) for _ in layers]
        outs = []
        for paged, backend in zip(pools, backends):
            batch = make_batch(paged, backend, mode, reqs, prefix_lens, ext_lens)
            backend.init_forward_metadata(batch)
            if backend is flash:
                planned = set(batch.attn_metadata.wrappers)  # planned up front, before any layer
                assert planned == (set() if num_pass == 0 else specs)
            outs.append([run_layer(layer, batch, *qkv_in) for layer, qkv_in in zip(layers, inputs)])
        for native_out, flash_out in zip(*outs):
            torch.testing.assert_close(flash_out, native_out, atol=4e-3, rtol=4e-3)
        wrappers = batch.attn_metadata.wrappers
        assert set(wrappers) == specs
    everything = [*flash.prefill_wrappers.values(), *flash.decode_wrappers.values()]
    assert len(flash.prefill_wrappers) == len(flash.decode_wrappers) == len(specs)
    assert all(w.workspace is flash.workspace for w in everything)  # one workspace, shared
    assert sum(len(w.plans) for w in flash.prefill_wrappers.values()) == 2 * len(specs)  # once per pass
    assert sum(len(w.plans) for w in flash.decode_wrappers.values()) == DECODE_STEPS * len(specs)
    assert sum(w.num_runs for w in everything) == (2 + DECODE_STEPS) * len(layers)  # once per layer
    for buf_native, buf_flash in zip(pools[0].pool.get_kv_buffer(2), pools[1].pool.get_kv_buffer(2)):
        assert torch.equal(buf_native, buf_flash)


def test_graph_hooks_plan_outside_and_replay_reads_fixed_buffers(standin):
    from sglkit.layers.attention.flashinfer_backend import FlashInferAttnBackend

    dtype, bs = torch.float16, 4
    pools = twin_pools(dtype, [41, 9, 90], num_layers=2)
    layers = [
        RadixAttention(0, 8, NUM_KV_HEADS, HEAD_DIM, SCALING),
        RadixAttention(1, 8, NUM_KV_HEADS, HEAD_DIM, SCALING, sliding_window=16),
    ]
    native, flash = TorchNativeAttnBackend(), FlashInferAttnBackend(DEVICE, workspace_bytes=SMALL_WORKSPACE)
    flash.init_cuda_graph_state(bs, bs * MAX_CONTEXT, layers)
    assert list(flash.specs) == [layer_spec(layer) for layer in layers]
    qkv = qkv_maker(8, dtype)
    for step, lens in enumerate([[39, 7, 80], [40, 8, 81]]):
        batch = static_decode_batch(pools[1], flash, [0, 1, 2], lens, bs)
        hook = flash.init_forward_metadata_replay_cuda_graph
        (flash.init_forward_metadata_capture_cuda_graph if step == 0 else hook)(batch)
        graph_wrappers = [flash.graph_wrappers[(bs, layer_spec(layer))] for layer in layers]
        plans = [len(w.plans) for w in graph_wrappers]
        assert plans == [step + 1] * 2  # one plan per spec per replay, in the hook
        inputs = [qkv(bs) for _ in layers]
        captured = [run_layer(layer, batch, *x) for layer, x in zip(layers, inputs)]  # the graph's work
        assert [len(w.plans) for w in graph_wrappers] == plans  # no plan() while the graph's work runs
        real = make_batch(pools[0], native, ForwardMode.DECODE, [0, 1, 2], [n - 1 for n in lens], [1] * 3)
        native.init_forward_metadata(real)
        for layer, (q, k, v), out in zip(layers, inputs, captured):
            expected = run_layer(layer, real, q[:3], k[:3], v[:3])
            torch.testing.assert_close(out[:3], expected, atol=4e-3, rtol=4e-3)
    for wrapper in graph_wrappers:
        assert wrapper.use_cuda_graph and wrapper.fixed_batch_size == bs
        assert wrapper.buffers["kv_indptr"].data_ptr() == flash.graph_kv_indptr.data_ptr()
        assert wrapper.buffers["kv_indices"] is flash.graph_kv_indices
        assert wrapper.buffers["kv_last_page_len"].tolist() == [1] * bs
    assert flash.graph_kv_indptr[: bs + 1].tolist() == [0, 40, 48, 129, 130]  # the padded row: length 1
    stranger = RadixAttention(0, 8, NUM_KV_HEADS, HEAD_DIM, 0.5)  # a spec the graph state never listed
    with pytest.raises(RuntimeError, match="init_cuda_graph_state"):
        run_layer(stranger, batch, *qkv(bs))


def test_model_runner_graph_decode_matches_eager_with_standin(standin, llama_path):
    """The real ModelRunner + CudaGraphRunner (EagerReplayGraph for torch.cuda.CUDAGraph) over the backend."""
    from sglkit.layers.attention.flashinfer_backend import FlashInferAttnBackend
    from sglkit.runtime.executor.cuda_graph_runner import EagerReplayGraph
    from sglkit.runtime.executor.model_runner import ModelRunner
    from tests.runtime.executor.graph_cases import greedy, tiny_server_args

    runner = ModelRunner(tiny_server_args(llama_path, "torch_native", dtype="float16"))
    native_logits, native_tokens, _, _ = greedy(runner, 3, use_graph=False)
    runner.attn_backend = FlashInferAttnBackend(
        "cpu", workspace_bytes=SMALL_WORKSPACE
    )  # the factory says CUDA
    runner.init_cuda_graphs(graph_factory=EagerReplayGraph, max_bs=4, show_progress=False)
    logits_g, tokens_g, _, _ = greedy(runner, 3, use_graph=True)
    assert runner.cuda_graph_runner.num_replays == tokens_g.shape[0]
    logits_e, tokens_e, _, _ = greedy(runner, 3, use_graph=False)
    assert torch.equal(tokens_g, tokens_e)
    torch.testing.assert_close(logits_g, logits_e)
    torch.testing.assert_close(logits_e, native_logits, atol=3e-2, rtol=3e-2)  # fp16: same model, near
    assert sorted(bs for bs, _ in runner.attn_backend.graph_wrappers) == [1, 2, 4]


def test_float32_pool_is_refused(standin):
    from sglkit.layers.attention.flashinfer_backend import FlashInferAttnBackend

    paged = make_paged(NUM_KV_HEADS, HEAD_DIM, torch.float32, seed=1)
    req = paged.add_request(4)
    backend = FlashInferAttnBackend(DEVICE, workspace_bytes=SMALL_WORKSPACE)
    batch = make_batch(paged, backend, ForwardMode.EXTEND, [req], [0], [4])
    with pytest.raises(ValueError, match="float16 or bfloat16.*--dtype bfloat16"):
        backend.init_forward_metadata(batch)


# ----- (3) the factory -----
def test_factory_refuses_cpu_and_a_missing_package(monkeypatch):
    from sglkit.layers.attention import flashinfer_backend

    with pytest.raises(ValueError, match="needs a CUDA device"):
        create_attention_backend("flashinfer", "cpu")
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # not importable, installed or not
    with pytest.raises(ValueError, match=r"pip install 'sglkit\[flashinfer\]'.*flashinfer-python"):
        create_attention_backend("flashinfer", "cuda")
    with pytest.raises(ImportError, match=r"pip install 'sglkit\[flashinfer\]'"):
        flashinfer_backend.FlashInferAttnBackend("cuda")


# ----- the real package on a GPU -----
@pytest.mark.gpu
@needs_flashinfer
@pytest.mark.parametrize("group, options", OPTIONS, ids=OPTION_IDS)
def test_gpu_flashinfer_matches_triton(group, options):
    from sglkit.layers.attention.flashinfer_backend import FlashInferAttnBackend
    from sglkit.layers.attention.triton_backend import TritonAttnBackend

    dtype = torch.bfloat16
    pools = twin_pools(dtype, [n + DECODE_STEPS for n in PROMPT_LENS])
    layer = RadixAttention(1, NUM_KV_HEADS * group, NUM_KV_HEADS, HEAD_DIM, SCALING, **options)
    backends = [TritonAttnBackend("cuda"), create_attention_backend("flashinfer", "cuda")]
    assert isinstance(backends[1], FlashInferAttnBackend)
    qkv = qkv_maker(layer.num_heads, dtype)
    for mode, reqs, prefix_lens, ext_lens in passes():
        q, k, v = qkv(sum(ext_lens))
        outs = []
        for paged, backend in zip(pools, backends):
            batch = make_batch(paged, backend, mode, reqs, prefix_lens, ext_lens)
            backend.init_forward_metadata(batch)
            outs.append(run_layer(layer, batch, q, k, v))
        torch.testing.assert_close(outs[1], outs[0], atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@needs_flashinfer
def test_gpu_captured_decode_graphs_match_eager(tiny_model_factory):
    """Real torch.cuda.CUDAGraph captures through the model runner: graph decode == eager flashinfer decode."""
    from sglkit.runtime.executor.model_runner import ModelRunner
    from sglkit.server_args import ServerArgs
    from tests.runtime.executor.graph_cases import greedy

    path = tiny_model_factory("LlamaForCausalLM", hidden_size=256, intermediate_size=512)  # head_dim 64
    args = ServerArgs(
        model_path=path,
        device="cuda",
        dtype="bfloat16",
        attention_backend="flashinfer",
        random_seed=0,
        context_length=64,
        max_total_tokens=1024,
        max_running_requests=16,
        cuda_graph_max_bs=4,
        disable_radix_cache=True,
    )
    runner = ModelRunner(args)
    assert runner.cuda_graph_runner is not None
    logits_g, tokens_g, _, _ = greedy(runner, 3, use_graph=True)
    assert runner.cuda_graph_runner.num_replays == tokens_g.shape[0]
    logits_e, _, _, _ = greedy(runner, 3, use_graph=False)
    torch.testing.assert_close(logits_g, logits_e, atol=2e-2, rtol=2e-2)
