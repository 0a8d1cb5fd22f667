"""Linear layers (sglkit/layers/linear.py): each loader puts checkpoint tensors in the right rows / columns,
a fake tensor-parallel rank keeps exactly its slice, and every class packs for oneDNN and computes x W^T + b."""

from __future__ import annotations

import pytest
import torch

from sglkit.layers.linear import (
    ColumnParallelLinear,
    Linear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    pack_linear_weights,
)

GEN = torch.Generator().manual_seed(0)


def rand(*shape) -> torch.Tensor:
    return torch.randn(*shape, generator=GEN)


def load(layer, name: str, tensor: torch.Tensor, shard_id=None) -> None:
    """Load through the parameter's attached loader, as sglkit.models.weight_utils does."""
    param = getattr(layer, name)
    if shard_id is None:
        param.weight_loader(param, tensor)
    else:
        param.weight_loader(param, tensor, shard_id)


def test_every_parameter_carries_its_layers_loader():
    layers = [
        Linear(4, 6),
        ColumnParallelLinear(4, 6),
        RowParallelLinear(4, 6),
        MergedColumnParallelLinear(4, [3, 3]),
        QKVParallelLinear(8, 2, 2, 1),
    ]
    for layer in layers:
        # Each parameter's loader is the layer's entry (releases a processed weight), then its class's loader.
        for param in layer.parameters():
            loader = param.weight_loader
            assert loader.__self__ is layer and loader.__func__ is Linear.load_weight
        load(layer, "weight", torch.ones(layer.weight.shape))  # reaches the class's own weight_loader
        assert torch.equal(layer.weight, torch.ones(layer.weight.shape))


def test_qkv_shards_land_in_their_rows():
    layer = QKVParallelLinear(hidden_size=8, head_dim=2, total_num_heads=4, total_num_kv_heads=2, bias=True)
    assert layer.weight.shape == (8 + 4 + 4, 8) and (layer.q_size, layer.kv_size) == (8, 4)
    q, k, v = rand(8, 8), rand(4, 8), rand(4, 8)
    qb, kb, vb = rand(8), rand(4), rand(4)
    for shard, w, b in (("v", v, vb), ("q", q, qb), ("k", k, kb)):  # any order
        load(layer, "weight", w, shard)
        load(layer, "bias", b, shard)
    assert torch.equal(layer.weight, torch.cat([q, k, v])) and torch.equal(
        layer.bias, torch.cat([qb, kb, vb])
    )
    fused = rand(16, 8)  # our own state_dict: the whole fused tensor at once
    load(layer, "weight", fused)
    assert torch.equal(layer.weight, fused)
    with pytest.raises(ValueError, match="shards"):
        load(layer, "weight", q, "x")


def test_gate_up_shards_land_in_their_rows():
    layer = MergedColumnParallelLinear(6, [5, 5], bias=False)
    gate, up = rand(5, 6), rand(5, 6)
    load(layer, "weight", up, 1)
    load(layer, "weight", gate, 0)
    assert torch.equal(layer.weight[:5], gate) and torch.equal(layer.weight[5:], up)
    assert layer.shard_ids == (0, 1)


def test_a_shard_of_another_size_raises_torchs_message():
    layer = QKVParallelLinear(8, 2, 4, 2, bias=False)
    layer.weight.data.fill_(7.0)
    with pytest.raises(RuntimeError, match=r"size of tensor a \(4\) must match the size of tensor b \(6\)"):
        load(layer, "weight", rand(6, 8), "k")
    with pytest.raises(RuntimeError, match="refusing to broadcast"):
        load(layer, "weight", rand(1, 8), "k")  # broadcastable, still refused
    assert (layer.weight == 7.0).all()  # nothing was written


@pytest.mark.parametrize("rank", [0, 1])
def test_rank_sliced_loads_with_fake_tp_size_2(rank):
    w, b = rand(8, 6), rand(8)
    col = ColumnParallelLinear(6, 8, bias=True, tp_rank=rank, tp_size=2)
    load(col, "weight", w)
    load(col, "bias", b)
    assert col.weight.shape == (4, 6)
    assert torch.equal(col.weight, w[4 * rank : 4 * rank + 4]) and torch.equal(
        col.bias, b[4 * rank : 4 * rank + 4]
    )

    row = RowParallelLinear(8, 6, bias=True, tp_rank=rank, tp_size=2)
    w_row, b_row = rand(6, 8), rand(6)
    load(row, "weight", w_row)
    load(row, "bias", b_row)
    assert torch.equal(row.weight, w_row[:, 4 * rank : 4 * rank + 4]) and torch.equal(row.bias, b_row)

    merged = MergedColumnParallelLinear(6, [4, 4], bias=False, tp_rank=rank, tp_size=2)
    gate, up = rand(4, 6), rand(4, 6)
    load(merged, "weight", gate, 0)
    load(merged, "weight", up, 1)
    half = slice(2 * rank, 2 * rank + 2)
    assert torch.equal(merged.weight, torch.cat([gate[half], up[half]]))
    load(merged, "weight", torch.zeros(8, 6))  # whole fused tensor: split, then sliced per output
    load(merged, "weight", torch.cat([gate, up]))
    assert torch.equal(merged.weight, torch.cat([gate[half], up[half]]))


@pytest.mark.parametrize("rank", [0, 1, 2, 3])
def test_qkv_rank_slices_split_and_replicate_kv_heads(rank):
    # 4 query heads, 2 KV heads, head_dim 2: with tp_size 4 each rank has 1 query head and replicates 1 KV head.
    q, k, v = rand(8, 4), rand(4, 4), rand(4, 4)
    layer = QKVParallelLinear(4, 2, 4, 2, bias=False, tp_rank=rank, tp_size=4)
    assert (layer.num_heads, layer.num_kv_heads, layer.num_kv_replicas) == (1, 1, 2)
    for shard, w in (("q", q), ("k", k), ("v", v)):
        load(layer, "weight", w, shard)
    kv = slice(2 * (rank // 2), 2 * (rank // 2) + 2)
    assert torch.equal(layer.weight, torch.cat([q[2 * rank : 2 * rank + 2], k[kv], v[kv]]))
    halves = QKVParallelLinear(4, 2, 4, 2, bias=False, tp_rank=rank % 2, tp_size=2)
    halves.weight_loader(halves.weight, torch.cat([q, k, v]))  # whole fused tensor
    r = rank % 2
    assert torch.equal(
        halves.weight, torch.cat([q[4 * r : 4 * r + 4], k[2 * r : 2 * r + 2], v[2 * r : 2 * r + 2]])
    )


def test_indivisible_sizes_are_refused():
    with pytest.raises(ValueError, match="not divisible by tp_size=2"):
        ColumnParallelLinear(4, 5, tp_size=2)
    with pytest.raises(ValueError, match="not divisible by tp_size=4"):
        QKVParallelLinear(8, 2, 6, 2, tp_size=4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_class_packs_and_matches_f_linear(dtype):
    model = torch.nn.ModuleDict(
        {
            "plain": Linear(16, 24, bias=True, dtype=dtype),
            "col": ColumnParallelLinear(16, 24, bias=False, dtype=dtype),
            "row": RowParallelLinear(16, 24, bias=True, dtype=dtype),
            "merged": MergedColumnParallelLinear(16, [12, 12], bias=True, dtype=dtype),
            "qkv": QKVParallelLinear(16, 4, 4, 2, bias=True, dtype=dtype),
        }
    )
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(rand(*param.shape))
    x = rand(5, 16).to(dtype)
    with torch.inference_mode():
        expected = {name: torch.nn.functional.linear(x, m.weight, m.bias) for name, m in model.items()}
        packed = pack_linear_weights(model)
        if dtype == torch.float32 and torch.backends.mkldnn.is_available():  # bf16 packing needs AVX-512 BF16
            assert packed == len(model) and all(m.linear_method.processed for m in model.values())
        for name, layer in model.items():
            torch.testing.assert_close(
                layer(x), expected[name], atol=1e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2
            )


# (tp_size, total query heads, total KV heads): KV heads split, exactly one per rank, and replicated.
FUSED_LAYOUTS = [(1, 4, 2), (2, 4, 2), (2, 4, 4), (4, 8, 2), (4, 4, 1)]


@pytest.mark.parametrize("tp_size, num_heads, num_kv_heads", FUSED_LAYOUTS)
def test_whole_fused_qkv_tensor_equals_its_shards_on_every_rank(tp_size, num_heads, num_kv_heads):
    """A Phi-3 ``qkv_proj`` checkpoint tensor ([q; k; v] rows) loads as if q, k and v came separately."""
    hidden, head_dim = 6, 2
    q, k, v = (
        rand(num_heads * head_dim, hidden),
        rand(num_kv_heads * head_dim, hidden),
        rand(num_kv_heads * head_dim, hidden),
    )
    qb, kb, vb = rand(num_heads * head_dim), rand(num_kv_heads * head_dim), rand(num_kv_heads * head_dim)
    for rank in range(tp_size):
        fused, split = (
            QKVParallelLinear(
                hidden, head_dim, num_heads, num_kv_heads, bias=True, tp_rank=rank, tp_size=tp_size
            )
            for _ in range(2)
        )
        load(fused, "weight", torch.cat([q, k, v]))
        load(fused, "bias", torch.cat([qb, kb, vb]))
        for shard, w, b in (("q", q, qb), ("k", k, kb), ("v", v, vb)):
            load(split, "weight", w, shard)
            load(split, "bias", b, shard)
        assert torch.equal(fused.weight, split.weight) and torch.equal(fused.bias, split.bias)
        replicas = max(1, tp_size // num_kv_heads)  # ranks holding the same KV head
        kv_head = (rank // replicas) * fused.num_kv_heads  # this rank's first KV head
        rows = slice(kv_head * head_dim, (kv_head + fused.num_kv_heads) * head_dim)
        assert torch.equal(fused.weight[fused.q_size : fused.q_size + fused.kv_size], k[rows])  # its K rows


@pytest.mark.parametrize("tp_size", [1, 2, 4])
def test_whole_fused_gate_up_tensor_equals_its_shards_on_every_rank(tp_size):
    """A Phi-3 ``gate_up_proj`` checkpoint tensor ([gate; up] rows), and a 3-output fusion of unequal sizes."""
    for sizes in ([8, 8], [4, 8, 12]):
        parts = [rand(n, 6) for n in sizes]
        for rank in range(tp_size):
            fused = MergedColumnParallelLinear(6, sizes, bias=False, tp_rank=rank, tp_size=tp_size)
            split = MergedColumnParallelLinear(6, sizes, bias=False, tp_rank=rank, tp_size=tp_size)
            load(fused, "weight", torch.cat(parts))
            for i, part in enumerate(parts):
                load(split, "weight", part, i)
            assert torch.equal(fused.weight, split.weight)
            expected = torch.cat(
                [p[rank * (n // tp_size) : (rank + 1) * (n // tp_size)] for p, n in zip(parts, sizes)]
            )
            assert torch.equal(fused.weight, expected)


def test_whole_fused_tensor_of_another_row_count_is_refused():
    qkv = QKVParallelLinear(4, 2, 4, 2, bias=False, tp_rank=1, tp_size=2)
    with pytest.raises(ValueError, match=r"\(14, 4\) does not have 16 rows"):
        load(qkv, "weight", rand(14, 4))
    merged = MergedColumnParallelLinear(6, [4, 4], bias=False, tp_rank=0, tp_size=2)
    with pytest.raises(ValueError, match="does not have 8 rows"):
        load(merged, "weight", rand(6, 6))
