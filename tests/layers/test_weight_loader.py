"""Copy rules behind the layers' weight loaders (sglkit/layers/weight_loader.py): strict copies, rank slices."""

from __future__ import annotations

import pytest
import torch

from sglkit.layers.norm import RMSNorm
from sglkit.layers.weight_loader import copy_weight, default_weight_loader, shard_tensor


def test_copy_weight_casts_but_never_broadcasts():
    dst = torch.zeros(3, 4, dtype=torch.bfloat16)
    src = torch.arange(12.0).view(3, 4)
    copy_weight(dst, src)
    assert torch.equal(dst, src.to(torch.bfloat16))
    with pytest.raises(RuntimeError) as err:
        copy_weight(torch.zeros(512, 64), torch.zeros(512, 96))
    assert (
        str(err.value)
        == "The size of tensor a (64) must match the size of tensor b (96) at non-singleton dimension 1"
    )
    with pytest.raises(RuntimeError, match=r"checkpoint tensor \(4,\) vs parameter \(3, 4\)"):
        copy_weight(dst, torch.ones(4))
    assert torch.equal(dst, src.to(torch.bfloat16))  # untouched by the refused copies


def test_shard_tensor_takes_the_ranks_slice():
    t = torch.arange(24).view(4, 6)
    assert shard_tensor(t, 0, 0, 1) is t
    assert torch.equal(shard_tensor(t, 0, 1, 2), t[2:])
    assert torch.equal(shard_tensor(t, 1, 2, 3), t[:, 4:])
    with pytest.raises(ValueError, match="into 4 equal parts along dim 1"):
        shard_tensor(t, 1, 0, 4)


def test_norms_use_the_default_whole_tensor_copy():
    norm = RMSNorm(5)
    assert norm.weight.weight_loader is default_weight_loader
    norm.weight.weight_loader(norm.weight, torch.full((5,), 2.0))
    assert torch.equal(norm.weight.data, torch.full((5,), 2.0))
    with pytest.raises(ValueError, match="no shards"):
        default_weight_loader(norm.weight, torch.ones(5), "q")
