"""Pooler (sglkit/layers/pooler.py): packed hidden states -> one vector per sequence, against per-sequence torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglkit.layers.pooler import Pooler, PoolingConfig, PoolingType

SEQ_LENS = [3, 1, 5, 2]


def per_sequence(hidden: torch.Tensor, kind: PoolingType) -> torch.Tensor:
    """The obvious loop over sequences."""
    out, start = [], 0
    for n in SEQ_LENS:
        seq = hidden[start : start + n]
        start += n
        out.append(
            {
                PoolingType.LAST: lambda s: s[-1],
                PoolingType.CLS: lambda s: s[0],
                PoolingType.MEAN: lambda s: s.mean(0),
                PoolingType.MAX: lambda s: s.max(0).values,
                PoolingType.MEAN_SQRT_LEN: lambda s: s.sum(0) / len(s) ** 0.5,
            }[kind](seq)
        )
    return torch.stack(out)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("kind", list(PoolingType))
def test_pooling_matches_a_per_sequence_loop(kind, normalize):
    hidden = torch.randn(sum(SEQ_LENS), 8, generator=torch.Generator().manual_seed(0))
    pooled = Pooler(kind, normalize)(hidden, torch.tensor(SEQ_LENS))
    expected = per_sequence(hidden, kind)
    if normalize:
        expected = F.normalize(expected, dim=-1)
        torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(len(SEQ_LENS)))
    assert pooled.shape == (len(SEQ_LENS), 8)
    torch.testing.assert_close(pooled, expected)


def test_config_round_trip_and_names():
    config = PoolingConfig(PoolingType.MEAN, True)
    pooler = Pooler.from_config(config)
    assert pooler.config == config
    assert Pooler("last", False).pooling_type is PoolingType.LAST
    assert "mean" in repr(pooler) and "normalize=True" in repr(pooler)
    with pytest.raises(ValueError):
        Pooler("median", False)
