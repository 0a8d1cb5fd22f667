"""GPU memory budget: SGLang's sizing rule on pretend GPUs (numbers checked by hand) and the runner's glue.

The 8B shape is Llama-3-8B: hidden 4096, intermediate 14336, vocab 128256, 32 layers, 32 query / 8 KV heads of
128, bf16. Its figures, worked out once here and used below:

- weights: 8,030,261,248 parameters x 2 B = 16,060,522,496 B (14.96 GiB; the seed's log shows 15.09 GB used);
- KV per token: 2 (K, V) x 32 layers x 8 heads x 128 x 2 B = 131,072 B (128 KiB);
- activation width per token: 4 x 4096 + (32 + 2 x 8) x 128 + 3 x 14336 = 16384 + 6144 + 43008 = 65,536.

GPU sizes are what ``torch.cuda.get_device_properties().total_memory`` reports, in MiB: H200 143,771, H100 80 GB
81,559, a 24 GB card 24,564. Before loading, 512 MiB are taken by the CUDA context.
"""

from __future__ import annotations

import logging

import psutil
import pytest

from sglkit.cache.memory_pool import MHATokenToKVPool
from sglkit.runtime.executor import model_runner as model_runner_module
from sglkit.runtime.executor.memory_budget import (
    ModelShape,
    NotEnoughMemoryError,
    default_mem_fraction_static,
    plan_kv_pool,
    runtime_reserve,
)
from sglkit.runtime.executor.model_runner import (
    CPU_DEFAULT_MAX_RUNNING_REQUESTS,
    CPU_DEFAULT_MEM_FRACTION,
    CPU_MAX_AUTO_TOKENS,
    ModelRunner,
)
from sglkit.server_args import ServerArgs

MIB, GIB = 1 << 20, 1 << 30
SHAPE_8B = ModelShape(
    hidden_size=4096,
    intermediate_size=14336,
    vocab_size=128256,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    dtype_bytes=2,
)
WEIGHTS_8B = 8_030_261_248 * 2
KV_PER_TOKEN_8B = 131_072
CONTEXT = 8192
H200_MIB, H100_MIB, GPU24_MIB = 143_771, 81_559, 24_564
CUDA_CONTEXT = 512 * MIB


def plan(gpu_mib: int, max_bs: int, chunk: int, **kwargs):
    """The 8B shape's plan on a pretend GPU of ``gpu_mib`` with the weights loaded."""
    total = gpu_mib * MIB
    free_before = total - CUDA_CONTEXT
    return plan_kv_pool(
        SHAPE_8B,
        total_bytes=total,
        free_before_load=free_before,
        free_after_load=free_before - WEIGHTS_8B,
        kv_bytes_per_token=KV_PER_TOKEN_8B,
        context_len=CONTEXT,
        max_bs=max_bs,
        chunk_tokens=chunk,
        min_tokens=CONTEXT // 4,
        **kwargs,
    )


def test_activation_width_of_the_8b_shape():
    assert SHAPE_8B.activation_width == 65_536


def test_default_mem_fraction_follows_sglang_by_gpu_memory():
    # H200 / H100, chunk 8192, max_bs 256: 512 + 1.5 x 8192 + 1024 / 8 + 2 x 256 = 13440 MiB (over the 10 GiB floor)
    assert (
        default_mem_fraction_static(H200_MIB, 8192, 256, cuda_graphs=True) == 0.907
    )  # 130331 / 143771 = 0.9065
    assert (
        default_mem_fraction_static(H100_MIB, 8192, 256, cuda_graphs=True) == 0.835
    )  # 68119 / 81559 = 0.8352
    # without graphs: 12928 MiB; 130843 / 143771 = 0.9101
    assert default_mem_fraction_static(H200_MIB, 8192, 256, cuda_graphs=False) == 0.91
    # a small reserve on a big GPU is raised to 10 GiB: chunk 2048 -> 512 + 3072 + 128 + 2 = 3714 < 10240;
    # (143771 - 10240) / 143771 = 0.9288
    assert default_mem_fraction_static(H200_MIB, 1024, 1, cuda_graphs=True) == 0.929
    # 24 GB (under 60 GiB, no floor), SGLang's chunk 4096 and max_bs 48: 512 + 6144 + 128 + 96 = 6880 MiB;
    # 17684 / 24564 = 0.7199
    assert default_mem_fraction_static(GPU24_MIB, 4096, 48, cuda_graphs=True) == 0.72


def test_runtime_reserve_items_for_the_8b_shape():
    reserve = runtime_reserve(SHAPE_8B, max_bs=256, chunk_tokens=8192, context_len=CONTEXT, cuda_graphs=True)
    assert reserve == {
        "activations": 8192 * 65_536 * 2,  # exactly 1 GiB
        "logits": 256 * 128_256 * (2 + 4),  # bf16 LM-head output + float32 copy: 197,001,216 (0.18 GiB)
        "sampler": 256 * 128_256 * 44,  # 1,444,675,584 (1.35 GiB)
        "runtime_overhead": 512 * MIB,
        # kv_indices 256 x 8193 int32 (8,389,632) + split outputs/LSE 256 x 32 heads x 16 splits x 129 fp32
        # (67,633,152) = 76,022,784 (0.07 GiB)
        "attention_workspace": 256 * 8193 * 4 + 256 * 32 * 16 * 129 * 4,
        # 2 MiB per graph batch size (512 MiB) + the graph pool's activations 256 x 65536 x 2 (32 MiB)
        "cuda_graphs": 256 * 2 * MIB + 256 * 65_536 * 2,
    }
    assert sum(reserve.values()) == 3_898_737_664  # 3718.1 MiB = 3.63 GiB
    eager = runtime_reserve(SHAPE_8B, max_bs=256, chunk_tokens=8192, context_len=CONTEXT, cuda_graphs=False)
    assert set(eager) == {"activations", "logits", "sampler", "runtime_overhead"}


def test_h200_default_fraction_sizes_the_pool():
    result = plan(H200_MIB, max_bs=256, chunk=8192)
    # free before load 143259 MiB; after the weights 150,217,949,184 - 16,060,522,496 = 134,157,426,688 B.
    assert result.free_after_load == 134_157_426_688
    assert result.mem_fraction_static == 0.907
    # slack = 150,217,949,184 x 0.093 = 13,970,269,274 B (13.01 GiB): larger than the 3.63 GiB estimate
    assert result.slack_bytes == 13_970_269_274 and not result.estimate_binds
    # pool = (134,157,426,688 - 13,970,269,274) // 131,072 = 916,955 tokens (111.93 GiB)
    assert result.num_tokens == 916_955
    assert round(result.pool_bytes / GIB, 2) == 111.93
    assert result.weights_bytes == WEIGHTS_8B
    assert "kv pool=111.93 GB (916955 tokens)" in result.summary()


def test_h100_80gb_default_fraction_sizes_the_pool():
    result = plan(H100_MIB, max_bs=256, chunk=8192)
    # free before 81047 MiB = 84,983,939,072 B; after the weights 68,923,416,576 B; fraction 0.835
    # slack = 84,983,939,072 x 0.165 = 14,022,349,946 B (13.06 GiB); pool = 54,901,066,630 // 131,072 = 418,861
    assert result.mem_fraction_static == 0.835
    assert result.num_tokens == 418_861
    assert round(result.pool_bytes / GIB, 2) == 51.13


def test_a_fraction_near_one_is_caught_by_the_runtime_estimate():
    result = plan(H200_MIB, max_bs=256, chunk=8192, mem_fraction_static=0.98)
    # slack 150,217,949,184 x 0.02 = 3,004,358,983 B (2.80 GiB) < the 3,898,737,664 B estimate (3.63 GiB)
    assert result.estimate_binds
    assert result.reserved_bytes == 3_898_737_664
    # pool = (134,157,426,688 - 3,898,737,664) // 131,072 = 993,794 tokens
    assert result.num_tokens == 993_794


def test_24gb_gpu_fits_with_sglangs_small_gpu_settings():
    # chunk 4096, max_bs 48 -> fraction 0.72; free before 24052 MiB = 25,220,349,952 B, after 9,159,827,456 B;
    # slack = 25,220,349,952 x 0.28 = 7,061,697,986 B (6.58 GiB); pool = 2,098,129,470 // 131,072 = 16,007 tokens
    result = plan(GPU24_MIB, max_bs=48, chunk=4096)
    assert result.mem_fraction_static == 0.72
    assert result.num_tokens == 16_007


def test_24gb_gpu_with_an_8k_chunk_leaves_no_room_and_says_what_to_change():
    # chunk 8192: 512 + 12288 + 128 + 96 = 13024 MiB reserved -> fraction 0.47, slack 12.45 GiB > 8.53 GiB free
    with pytest.raises(NotEnoughMemoryError) as excinfo:
        plan(GPU24_MIB, max_bs=48, chunk=8192)
    message = str(excinfo.value)
    assert message.startswith("Not enough memory for the KV cache: room for 0 tokens, 2048 needed")
    for hint in ("--mem-fraction-static", "--cuda-graph-max-bs", "--chunked-prefill-size"):
        assert hint in message
    assert "mem_fraction_static=0.47" in message


def test_model_shape_from_config_splits_over_tensor_parallel_ranks():
    class Cfg:
        hidden_size, intermediate_size, vocab_size = 4096, 14336, 128256
        num_attention_heads, num_key_value_heads, head_dim = 32, 8, 128

    assert ModelShape.from_config(Cfg, dtype_bytes=2) == SHAPE_8B
    half = ModelShape.from_config(Cfg, dtype_bytes=2, tp_size=2)
    assert (half.intermediate_size, half.num_heads, half.num_kv_heads, half.vocab_size) == (
        7168,
        16,
        4,
        128256,
    )


@pytest.mark.parametrize("available_gib", [3, 0.05])
def test_cpu_runner_sizes_the_pool_by_what_the_model_can_use(llama_path, monkeypatch, available_gib):
    """CPU: context length x max running requests, limited by 10% of the available RAM (and the token cap)."""
    available = int(available_gib * GIB)
    real = psutil.virtual_memory()
    monkeypatch.setattr(
        model_runner_module.psutil, "virtual_memory", lambda: real._replace(available=available)
    )
    runner = ModelRunner(ServerArgs(model_path=llama_path, device="cpu", random_seed=0))
    cfg = runner.model_config
    per_token = MHATokenToKVPool.bytes_per_token(
        cfg.num_hidden_layers, runner.num_kv_heads_per_rank, cfg.head_dim, runner.dtype
    )
    usable = runner.context_len * CPU_DEFAULT_MAX_RUNNING_REQUESTS
    assert runner.max_running_requests == min(
        CPU_DEFAULT_MAX_RUNNING_REQUESTS, runner.max_total_num_tokens // 2
    )
    ram_share = int(available * CPU_DEFAULT_MEM_FRACTION // per_token)
    assert runner.max_total_num_tokens == min(usable, ram_share, CPU_MAX_AUTO_TOKENS)
    if available_gib == 3:  # plenty of RAM: the model's own need decides (here above the token cap)
        assert runner.max_total_num_tokens == min(usable, CPU_MAX_AUTO_TOKENS) < ram_share


def test_cpu_pool_follows_max_running_requests_and_starts_zeroed(llama_path):
    """--max-running-requests 4: the pool holds 4 full contexts; the (lazily committed) buffers read as zeros."""
    runner = ModelRunner(
        ServerArgs(model_path=llama_path, device="cpu", random_seed=0, max_running_requests=4)
    )
    assert runner.max_total_num_tokens == runner.context_len * 4
    pool = runner.token_to_kv_pool
    assert all(not buf.any() for buf in pool.k_buffer + pool.v_buffer)
    assert not runner.req_to_token_pool.req_to_token.any()


def test_cuda_glue_uses_the_budget(monkeypatch, caplog):
    """``_resolve_pool_size`` on 'cuda' with mem_get_info faked: the 8B model on a pretend H200."""
    from types import SimpleNamespace

    import torch

    total = H200_MIB * MIB
    free_before = total - CUDA_CONTEXT
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (free_before - WEIGHTS_8B, total))
    monkeypatch.setattr(model_runner_module, "all_reduce_min_int", lambda n: n)
    runner = ModelRunner.__new__(ModelRunner)
    runner.server_args = ServerArgs(model_path="unused", device="cuda", context_length=CONTEXT)
    runner.device = "cuda"
    runner.dtype = torch.bfloat16
    runner.context_len = CONTEXT
    runner.free_before_load_bytes = free_before
    runner.chunked_prefill_size = 8192  # what __init__ resolves on a 140 GiB GPU
    runner.model = SimpleNamespace(num_kv_heads_per_rank=8)
    runner.model_config = SimpleNamespace(
        num_hidden_layers=32,
        hidden_size=4096,
        intermediate_size=14336,
        vocab_size=128256,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
    )
    monkeypatch.setattr(model_runner_module, "resolve_attention_backend", lambda name, device: "triton")
    with caplog.at_level(logging.INFO, logger=model_runner_module.__name__):
        assert runner._resolve_pool_size() == 916_955  # the H200 plan above (max_bs 256, chunk 8192)
    assert "Memory budget. mem_fraction_static=0.907" in caplog.text


def test_default_chunked_prefill_size_follows_sglang_by_gpu_memory():
    from sglkit.runtime.executor.memory_budget import default_chunked_prefill_size

    assert default_chunked_prefill_size("cpu", None) == 2048
    assert default_chunked_prefill_size("cuda", None) == 4096  # memory unknown
    sizes = {gb: default_chunked_prefill_size("cuda:0", gb) for gb in (16, 24, 48, 80, 140.4, 192)}
    assert sizes == {16: 2048, 24: 4096, 48: 4096, 80: 8192, 140.4: 8192, 192: 16384}
