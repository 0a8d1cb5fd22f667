"""Fused Triton ops (sglkit.layers.triton_fused) vs the torch code of RMSNorm, RotaryEmbedding and SiluAndMul.

The kernels run on CPU under Triton's interpreter. ``TRITON_INTERPRET`` must be set before triton is imported,
so ``test_kernels_under_interpreter`` re-runs this file in a subprocess with ``TRITON_INTERPRET=1`` and
``SGLKIT_TRITON_FUSED=1`` (the layers then dispatch to the kernels on CPU too); the other tests of the file
only run in that subprocess. fp32 and fp16 (the interpreter's bf16 is not what a GPU computes).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("SGLKIT_TRITON_FUSED") == "1"
in_interpreter = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 subprocess")
DTYPES = [torch.float32, torch.float16]
LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.mark.skipif(INTERPRETED, reason="this is the driver of the interpreted run")
def test_kernels_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "SGLKIT_TRITON_FUSED": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


@pytest.mark.skipif(INTERPRETED, reason="checks the default CPU path")
def test_cpu_default_never_imports_triton():
    code = (
        "import sys, torch\n"
        "from sglkit.layers.norm import RMSNorm\n"
        "from sglkit.layers.rotary import get_rope\n"
        "from sglkit.layers.activation import SiluAndMul\n"
        "from sglkit.layers.triton_fused import fused_ops_enabled\n"
        "x = torch.randn(3, 8)\n"
        "assert not fused_ops_enabled(x)\n"
        "RMSNorm(8)(x, x); SiluAndMul()(x)\n"
        "get_rope(8, 16, None)(torch.arange(3), x.view(3, 1, 8), x.view(3, 1, 8))\n"
        "assert 'triton' not in sys.modules, 'triton imported on the CPU path'\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SGLKIT_TRITON_FUSED", "TRITON_INTERPRET")}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)


@pytest.fixture
def torch_code(monkeypatch):
    """A context in which the layers run their torch code (the reference), whatever SGLKIT_TRITON_FUSED says
    (and not sglkit's fused CPU ops either)."""
    import contextlib

    import sglkit.layers.activation
    import sglkit.layers.norm
    import sglkit.layers.rotary

    @contextlib.contextmanager
    def ctx():
        with monkeypatch.context() as m:
            for mod in (sglkit.layers.norm, sglkit.layers.rotary, sglkit.layers.activation):
                m.setattr(mod, "fused_ops_enabled", lambda x: False)
                m.setattr(mod, "cpu_fused_ops_enabled", lambda x: False)  # nor sglkit's C++ ops
            yield

    return ctx


def _tol(dtype):
    return dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=4e-3, rtol=2e-3)


@in_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["RMSNorm", "Float32WeightRMSNorm", "GemmaRMSNorm"])
@pytest.mark.parametrize("hidden", [64, 96, 1000])
def test_rms_norm_matches_torch(torch_code, dtype, kind, hidden):
    import sglkit.layers.norm as norm
    from sglkit.layers.triton_fused.rmsnorm import rms_norm

    gen = torch.Generator().manual_seed(hidden)
    layer = getattr(norm, kind)(hidden, 1e-5, dtype=dtype)
    layer.requires_grad_(False)
    layer.weight.copy_((layer.weight.float() + 0.1 * torch.randn(hidden, generator=gen)).to(dtype))
    x = (3 * torch.randn(2, 5, hidden, generator=gen)).to(dtype)  # [..., H] with a leading batch dim
    residual = torch.randn(2, 5, hidden, generator=gen).to(dtype)
    with torch_code():
        ref, (ref_out, ref_res) = layer(x), layer(x, residual)
    fused, (out, res) = layer(x), layer(x, residual)
    assert fused.dtype == ref.dtype and fused.shape == ref.shape
    torch.testing.assert_close(fused, ref, **_tol(dtype))
    torch.testing.assert_close(out, ref_out, **_tol(dtype))
    torch.testing.assert_close(res, ref_res, atol=0, rtol=0)  # the sum, rounded as torch rounds it
    # the same through the op itself, on a strided input (a slice of a wider tensor)
    wide = torch.randn(4, hidden + 16, generator=gen).to(dtype)
    mode = layer.fused_weight_mode == "float32"
    got = rms_norm(
        wide[:, :hidden], layer.weight, 1e-5, weight_in_float32=mode, weight_offset=layer.weight_offset
    )
    with torch_code():
        torch.testing.assert_close(got, layer(wide[:, :hidden]), **_tol(dtype))


@in_interpreter
def test_rms_norm_against_float64():
    from sglkit.layers.triton_fused.rmsnorm import rms_norm

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(7, 333, generator=gen), torch.randn(333, generator=gen)
    x64 = x.double()
    ref = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6) * w.double()
    torch.testing.assert_close(rms_norm(x, w, 1e-6).double(), ref, atol=1e-5, rtol=1e-5)
    assert rms_norm(x[:0], w, 1e-6).shape == (0, 333)


@in_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "head_dim,rope,heads",
    [
        (64, None, (4, 2)),
        (128, LLAMA3, (8, 1)),
        (64, {"rope_type": "linear", "factor": 2.0}, (5, 5)),
        (64, {"partial_rotary_factor": 0.5}, (3, 1)),
        (80, {"partial_rotary_factor": 0.75}, (2, 2)),
    ],
)
def test_rope_matches_torch(torch_code, dtype, head_dim, rope, heads):
    from sglkit.layers.rotary import get_rope
    from sglkit.layers.triton_fused.rope import apply_rope

    num_q, num_kv = heads
    layer = get_rope(head_dim, 256, rope)
    gen = torch.Generator().manual_seed(head_dim)
    qkv = torch.randn(9, (num_q + 2 * num_kv) * head_dim, generator=gen).to(dtype)  # a fused qkv output
    q = qkv[:, : num_q * head_dim].view(9, num_q, head_dim)  # strided views, as the attention block passes
    k = qkv[:, num_q * head_dim : (num_q + num_kv) * head_dim].view(9, num_kv, head_dim)
    positions = torch.tensor([0, 1, 2, 31, 32, 33, 200, 255, 7])
    before = qkv.clone()
    with torch_code():
        ref_q, ref_k = layer(positions, q, k)
    got_q, got_k = layer(positions, q, k)
    assert torch.equal(qkv, before)  # out of place
    torch.testing.assert_close(got_q, ref_q, **_tol(dtype))
    torch.testing.assert_close(got_k, ref_k, **_tol(dtype))
    in_q, in_k = apply_rope(positions, q, k, layer.cos_sin_cache, layer.rotary_dim, inplace=True)
    assert in_q.data_ptr() == q.data_ptr() and in_k.data_ptr() == k.data_ptr()
    torch.testing.assert_close(q, ref_q, **_tol(dtype))
    torch.testing.assert_close(k, ref_k, **_tol(dtype))


@in_interpreter
def test_rope_longrope_rows(torch_code):
    from sglkit.layers.rotary import get_rope

    params = {
        "rope_type": "longrope",
        "original_max_position_embeddings": 32,
        "short_factor": [1.0 + 0.1 * i for i in range(16)],
        "long_factor": [2.0 + 0.2 * i for i in range(16)],
    }
    layer = get_rope(32, 128, params)
    layer.uses_cache_rows = True
    positions = torch.tensor([0, 5, 31, 40, 100])
    rows = layer.cache_rows(positions, torch.tensor([8, 8, 40, 120, 120]))
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(5, 4, 32, generator=gen), torch.randn(5, 2, 32, generator=gen)
    with torch_code():
        ref = layer(rows, q, k)
    got = layer(rows, q, k)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@in_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [80, 1500])
def test_silu_and_mul_matches_torch(torch_code, dtype, inter):
    from sglkit.layers.activation import SiluAndMul

    gen = torch.Generator().manual_seed(inter)
    x = (4 * torch.randn(2, 3, 2 * inter, generator=gen)).to(dtype)
    with torch_code():
        ref = SiluAndMul()(x)
    got = SiluAndMul()(x)
    assert got.shape == (2, 3, inter) and got.dtype == dtype
    torch.testing.assert_close(got, ref, **_tol(dtype))


@in_interpreter
def test_tiny_llama_logits_with_fused_ops(torch_code, llama_path):
    """A whole paged forward (prefill, then decode) with every fused op gives the torch code's logits."""
    from sglkit.core.forward_batch import ForwardMode
    from sglkit.models.loader import load_model
    from sglkit.testing.paged_runner import PagedRunner

    model, config = load_model(llama_path)

    def run():
        runner = PagedRunner(model, config)
        prefill = runner.forward([("a", [1, 5, 9, 20, 7]), ("b", [3, 4])])
        decode = runner.forward([("a", [11]), ("b", [12])], mode=ForwardMode.DECODE)
        return prefill + decode

    with torch_code():
        ref = run()
    for got, want in zip(run(), ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
