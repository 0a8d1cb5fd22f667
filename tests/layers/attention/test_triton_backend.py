"""TritonAttnBackend (sglkit.layers.attention.triton_backend) against TorchNativeAttnBackend, and end to end.

Layers run through ``RadixAttention`` (the backend's fused KV store, then its extend/decode kernels) over twin
pools: one served by each backend. Prefill with and without cached prefixes, then decode steps, with GQA, a
sliding window and a logit soft-cap; the forward reads no host-side per-request lists; the factory's rules; and
``sglkit.Engine(..., attention_backend="triton")`` gives torch_native's greedy tokens. Run on a GPU, or on CPU
under Triton's interpreter via test_triton_interpreter.py (a child process).
"""

from __future__ import annotations

import pytest
import torch

from sglkit.core.forward_batch import ForwardMode
from sglkit.layers.attention import create_attention_backend, resolve_attention_backend
from sglkit.layers.attention.base import RadixAttention
from sglkit.layers.attention.torch_native import TorchNativeAttnBackend
from tests.layers.attention.triton_cases import DEVICE, SCALING, make_batch, make_paged, needs_triton

pytest.importorskip("triton")
pytestmark = needs_triton

NUM_KV_HEADS, HEAD_DIM = 2, 64


class _NoHostLists(list):
    """A host list that fails when read: the per-layer forward must not touch per-request host data."""

    def __iter__(self):
        raise AssertionError("forward read a host-side per-request list")

    __getitem__ = __len__ = __iter__


def twin_pools(dtype, lengths):
    """Two identical random layouts (same slots, same stale K/V), one per backend."""
    pools = [make_paged(NUM_KV_HEADS, HEAD_DIM, dtype, num_layers=2, seed=11) for _ in range(2)]
    for paged in pools:
        torch.manual_seed(1)
        for n in lengths:
            paged.add_request(n)
    return pools


def run_pass(pools, backends, layer, mode, reqs, prefix_lens, ext_lens, q, k, v, hide_host_lists=False):
    outs = []
    for paged, backend in zip(pools, backends):
        batch = make_batch(paged, backend, mode, reqs, prefix_lens, ext_lens)
        backend.init_forward_metadata(batch)
        if hide_host_lists:
            batch.seq_lens_cpu = _NoHostLists()
            batch.extend_prefix_lens_cpu = _NoHostLists()
            batch.extend_seq_lens_cpu = _NoHostLists()
            batch.extend_start_loc_cpu = _NoHostLists()
        outs.append(layer(q.flatten(1), k.flatten(1), v.flatten(1), batch))
    return outs


@pytest.mark.parametrize(
    "group, options",
    [(1, {}), (4, {}), (8, {}), (4, {"sliding_window": 24}), (4, {"logit_cap": 1.5})],
    ids=["mha", "gqa4", "gqa8", "window", "softcap"],
)
def test_prefill_then_decode_matches_torch_native(group, options):
    from sglkit.layers.attention.triton_backend import TritonAttnBackend

    dtype = torch.float32
    num_heads = NUM_KV_HEADS * group
    layer = RadixAttention(1, num_heads, NUM_KV_HEADS, HEAD_DIM, SCALING, **options)
    decode_steps = 3
    prompt_lens = [1, 31, 33, 70]
    cached = [
        0,
        0,
        32,
        40,
    ]  # requests 2 and 3 extend a prefix already in the pool (radix hit / earlier chunk)
    pools = twin_pools(dtype, [n + decode_steps for n in prompt_lens])
    backends = [TorchNativeAttnBackend(), TritonAttnBackend(DEVICE, max_kv_splits=4)]
    gen = torch.Generator().manual_seed(2)

    def qkv(num_tokens):
        shapes = [(num_tokens, num_heads, HEAD_DIM)] + [(num_tokens, NUM_KV_HEADS, HEAD_DIM)] * 2
        return [torch.randn(s, generator=gen).to(DEVICE, dtype) for s in shapes]

    # The cached prefixes: written by one earlier prefill pass of their own.
    reqs = [2, 3]
    q, k, v = qkv(sum(cached))
    run_pass(pools, backends, layer, ForwardMode.EXTEND, reqs, [0, 0], cached[2:], q, k, v)
    # This pass: all four requests, their new prompt tokens over their cached prefixes.
    reqs = [0, 1, 2, 3]
    ext = [n - c for n, c in zip(prompt_lens, cached)]
    q, k, v = qkv(sum(ext))
    native, triton_out = run_pass(pools, backends, layer, ForwardMode.EXTEND, reqs, cached, ext, q, k, v)
    torch.testing.assert_close(triton_out, native, atol=2e-5, rtol=2e-5)
    lens = list(prompt_lens)
    for _ in range(decode_steps):
        q, k, v = qkv(len(reqs))
        native, triton_out = run_pass(
            pools, backends, layer, ForwardMode.DECODE, reqs, lens, [1] * 4, q, k, v, hide_host_lists=True
        )
        torch.testing.assert_close(triton_out, native, atol=2e-5, rtol=2e-5)
        lens = [n + 1 for n in lens]
    for buf_native, buf_triton in zip(pools[0].pool.get_kv_buffer(1), pools[1].pool.get_kv_buffer(1)):
        assert torch.equal(buf_native, buf_triton)  # the fused store wrote what the pool's own write did


def test_decode_forward_reads_no_host_lists_and_metadata_is_int32():
    from sglkit.layers.attention.triton_backend import TritonAttnBackend

    paged = make_paged(NUM_KV_HEADS, HEAD_DIM, torch.float32, seed=4)
    reqs = [paged.add_request(n) for n in (5, 40, 90)]
    backend = TritonAttnBackend(DEVICE, max_kv_splits=2)
    batch = make_batch(paged, backend, ForwardMode.DECODE, reqs, [4, 39, 89], [1, 1, 1])
    backend.init_forward_metadata(batch)
    meta = batch.attn_metadata
    assert meta.kv_indices.dtype == meta.kv_indptr.dtype == meta.num_kv_splits.dtype == torch.int32
    assert meta.num_kv_splits.tolist() == [1, 2, 2]  # cdiv(len, 32), capped at max_kv_splits
    batch.seq_lens_cpu = batch.extend_seq_lens_cpu = batch.extend_prefix_lens_cpu = _NoHostLists()
    layer = RadixAttention(0, 4, NUM_KV_HEADS, HEAD_DIM, SCALING)
    q = torch.randn(3, 4, HEAD_DIM, device=DEVICE)
    out = backend.forward_decode(q, layer, batch)
    assert out.shape == q.shape and torch.isfinite(out).all()


def test_factory_rules(monkeypatch):
    from sglkit.layers.attention.triton_backend import TritonAttnBackend

    assert (
        resolve_attention_backend(None, "cpu") == resolve_attention_backend("auto", "cpu") == "torch_native"
    )
    assert resolve_attention_backend("auto", "cuda") == "triton"
    assert resolve_attention_backend("auto", "cuda:1") == "triton"
    assert isinstance(create_attention_backend("auto", "cpu"), TorchNativeAttnBackend)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert isinstance(create_attention_backend("triton", "cpu"), TritonAttnBackend)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="needs a CUDA device.*TRITON_INTERPRET=1"):
        create_attention_backend("triton", "cpu")
    with pytest.raises(ValueError, match="Unknown attention_backend"):
        create_attention_backend("flash", "cpu")


@pytest.mark.slow
def test_engine_triton_gives_torch_natives_greedy_tokens(llama_path):
    """The entry point outside checks call: same greedy tokens as torch_native, with a shared prefix (radix hit)
    and a prompt longer than the prefill chunk (chunked prefill)."""
    import sglkit

    shared = "The quick brown fox jumps over the lazy dog. " * 6
    prompts = ["The capital of France is", shared + "Once upon a time", shared + "In a galaxy far away", "Hi"]
    params = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    tokens = {}
    for backend in ("torch_native", "triton"):
        engine = sglkit.Engine(model_path=llama_path, attention_backend=backend, chunked_prefill_size=32)
        try:
            engine.generate(prompts[1], {"temperature": 0, "max_new_tokens": 1})  # fill the radix cache
            tokens[backend] = [out["output_ids"] for out in engine.generate(prompts, params)]
        finally:
            engine.shutdown()
    assert all(len(ids) == 24 for ids in tokens["triton"])
    assert tokens["triton"] == tokens["torch_native"]


@pytest.mark.gpu
@pytest.mark.parametrize("group", [1, 4, 8])
def test_bf16_on_gpu_matches_torch_native(group):
    from sglkit.layers.attention.triton_backend import TritonAttnBackend

    num_heads = NUM_KV_HEADS * group
    layer = RadixAttention(0, num_heads, NUM_KV_HEADS, HEAD_DIM, SCALING)
    pools = twin_pools(torch.bfloat16, [300, 17, 64])
    backends = [TorchNativeAttnBackend(), TritonAttnBackend("cuda")]
    gen = torch.Generator().manual_seed(3)

    def qkv(n):
        shapes = [(n, num_heads, HEAD_DIM)] + [(n, NUM_KV_HEADS, HEAD_DIM)] * 2
        return [torch.randn(s, generator=gen).to("cuda", torch.bfloat16) for s in shapes]

    ext = [299, 16, 63]
    native, triton_out = run_pass(
        pools, backends, layer, ForwardMode.EXTEND, [0, 1, 2], [0, 0, 0], ext, *qkv(378)
    )
    torch.testing.assert_close(triton_out, native, atol=2e-2, rtol=2e-2)
    native, triton_out = run_pass(
        pools, backends, layer, ForwardMode.DECODE, [0, 1, 2], ext, [1, 1, 1], *qkv(3)
    )
    torch.testing.assert_close(triton_out, native, atol=2e-2, rtol=2e-2)
