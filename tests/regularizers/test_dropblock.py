"""DropBlock: identity cases, dropped fraction, block shape, clipping, mean preservation, ramp, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mp_hub.errors import ConfigError, InvalidInputError
from mp_hub.regularizers import DropBlock2d, drop_block, linear_drop_prob, set_drop_prob
from mp_hub.regularizers.dropblock import grow_blocks


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_identity_in_eval_and_at_zero():
    x = torch.randn(2, 3, 8, 8)
    module = DropBlock2d(drop_prob=0.3, block_size=3).eval()
    assert module(x) is x
    assert DropBlock2d(drop_prob=0.0).train()(x) is x
    assert drop_block(x, 0.0) is x
    assert DropBlock2d(0.3, 3).train()(x) is not x


def _expected_dropped_fraction(h: int, k: int, p: float) -> float:
    """Exact E[fraction dropped] on an h x h map: mean over positions of 1 - (1 - gamma)^(seeds covering it)."""
    gamma = p / k**2 * h * h / (h - k + 1) ** 2
    r = torch.arange(h)
    v = ((r >= (k - 1) // 2) & (r < h - k // 2)).double()
    valid = (v[:, None] * v[None, :])[None, None]
    covering = F.conv2d(F.pad(valid, [k // 2] * 4), torch.ones(1, 1, k, k, dtype=torch.float64))[..., :h, :h]
    return float((1 - (1 - gamma) ** covering).mean())


def test_dropped_fraction_close_to_p():
    # 128 maps of 64 x 64, p = 0.1, block 7: gamma ~ 0.0025 over 58 x 58 valid seeds -> ~1070 blocks of <= 49
    # elements in 524288, so the fraction's sd is about sqrt(1070) * 49 / 524288 ~ 0.003.
    p, k, h = 0.1, 7, 64
    x = torch.ones(8, 16, h, h)
    frac = float((drop_block(x, p, k, generator=_gen(0)) == 0).double().mean())
    # Against the exact expectation (~0.0947): 0.015 is 5 sd.
    assert frac == pytest.approx(_expected_dropped_fraction(h, k, p), abs=0.015)
    # Against p itself: overlapping blocks bias the fraction to ~1 - exp(-p) ~ p - p^2 / 2 = 0.095 (border seeds
    # cover fewer elements, -0.0005 more), so |frac - p| <= 0.0055 bias + 5 sd = 0.0205.
    assert abs(frac - p) < 0.021
    assert abs(_expected_dropped_fraction(h, k, p) - (1 - math.exp(-p))) < 1e-3


@pytest.mark.parametrize("k", [4, 5])
def test_dropped_region_is_union_of_whole_blocks(k):
    x = torch.ones(4, 2, 20, 20)
    zero = (drop_block(x, 0.2, k, generator=_gen(1)) == 0).double()
    assert zero.sum() > 0
    # Opening with a k x k square (top-left anchored, no padding): keeps exactly the unions of in-bounds blocks.
    full = (F.avg_pool2d(zero, k, stride=1) > 1 - 1e-9).double()
    opened = F.max_pool2d(F.pad(full, [k - 1] * 4), k, stride=1)  # (H - k + 1) + 2 (k - 1) - k + 1 = H
    assert torch.equal(opened, zero)


def test_block_size_clipped_to_small_maps():
    x = torch.rand(64, 3, 4, 4) + 1.0
    out = drop_block(x, 0.5, 7, generator=_gen(2))  # k = 4: one valid seed, each map all kept or all dropped
    assert out.shape == x.shape
    per_map = (out == 0).flatten(2).float().mean(-1)
    assert set(per_map.unique().tolist()) == {0.0, 1.0}
    out = DropBlock2d(0.3, 7).train()(torch.randn(2, 3, 3, 5))  # k = 3
    assert out.shape == (2, 3, 3, 5)


def test_expected_value_preserved():
    out = drop_block(torch.ones(4, 8, 32, 32), 0.2, 5, generator=_gen(3))
    assert float(out.mean()) == pytest.approx(1.0, rel=1e-6)  # kept elements scaled by numel / kept
    x = torch.rand(8, 16, 32, 32, generator=_gen(4)) + 0.5
    out = drop_block(x, 0.2, 5, generator=_gen(5))
    assert float(out.mean()) == pytest.approx(float(x.mean()), rel=1e-2)
    assert torch.equal(out, drop_block(x, 0.2, 5, generator=_gen(5)))  # same generator seed, same mask


def test_all_dropped_gives_zeros_not_nan():
    # 2 x 2 map, block 2: one valid seed, gamma = 0.99; with this generator seed it is drawn and covers the map.
    out = drop_block(torch.ones(1, 1, 2, 2), 0.99, 2, generator=_gen(0))
    assert torch.equal(out, torch.zeros(1, 1, 2, 2))


def test_ramp_and_set_drop_prob():
    model = nn.Sequential(nn.Conv2d(3, 3, 3), DropBlock2d(0.0), nn.Sequential(DropBlock2d(0.05, 3)))
    assert set_drop_prob(model, 0.2) == 2
    assert [m.drop_prob for m in model.modules() if isinstance(m, DropBlock2d)] == [0.2, 0.2]
    assert [linear_drop_prob(s, 10, 0.1) for s in (0, 5, 10, 20)] == pytest.approx([0.0, 0.05, 0.1, 0.1])
    assert "drop_prob=0.2, block_size=7" in repr(model[1])


def test_errors():
    with pytest.raises(InvalidInputError, match=r"\(3, 8, 8\)"):
        drop_block(torch.ones(3, 8, 8), 0.1)
    with pytest.raises(InvalidInputError, match=r"\(3, 8, 8\)"):
        DropBlock2d().eval()(torch.ones(3, 8, 8))
    for p in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="drop_prob"):
            drop_block(torch.ones(1, 1, 8, 8), p)
        with pytest.raises(ConfigError, match="drop_prob"):
            DropBlock2d(drop_prob=p)
    with pytest.raises(ConfigError, match="block_size"):
        DropBlock2d(block_size=0)
    with pytest.raises(ConfigError, match="block_size"):
        drop_block(torch.ones(1, 1, 8, 8), 0.1, 0)
    module = DropBlock2d()
    with pytest.raises(ConfigError, match="drop_prob"):
        module.drop_prob = 1.0
    with pytest.raises(ConfigError, match="drop_prob"):
        set_drop_prob(nn.Sequential(module), 2.0)


@pytest.mark.parametrize(  # drop_block clips the block to the feature map: k <= min(h, w)
    "k, h, w", [(k, h, w) for h, w in ((32, 32), (7, 9), (8, 8), (9, 7)) for k in range(1, min(h, w) + 1)]
)
def test_grow_blocks_is_the_max_pool_it_replaces(k, h, w):
    seeds = (torch.rand(3, 4, h, w, generator=torch.Generator().manual_seed(k)) < 0.2).float()
    expected = F.max_pool2d(seeds, kernel_size=k, stride=1, padding=k // 2)[..., :h, :w]
    assert torch.equal(grow_blocks(seeds, k), expected)
