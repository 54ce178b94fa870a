"""DropBlock (Ghiasi et al., NeurIPS 2018): drop contiguous square regions of conv feature maps.

Shaped like timm's ``layers/drop.py`` (timm is not a dependency here): a pure function :func:`drop_block`
and a thin module :class:`DropBlock2d`. The drop rate is usually ramped linearly from 0 during training:
a scheduler sets ``DropBlock2d.drop_prob`` (see :func:`set_drop_prob` and :func:`linear_drop_prob`).
"""

from __future__ import annotations

from numbers import Real

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InvalidInputError

__all__ = ["DropBlock2d", "drop_block", "grow_blocks", "linear_drop_prob", "set_drop_prob"]


def _check_drop_prob(drop_prob: float) -> float:
    if isinstance(drop_prob, bool) or not isinstance(drop_prob, Real) or not 0.0 <= drop_prob < 1.0:
        raise ConfigError(f"drop_prob must be a float in [0, 1), got {drop_prob!r}")
    return float(drop_prob)


def _check_block_size(block_size: int) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be an int >= 1, got {block_size!r}")
    return block_size


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidInputError(f"DropBlock expects a 4-D (N, C, H, W) tensor, got shape {shape}")


def grow_blocks(seeds: torch.Tensor, k: int) -> torch.Tensor:
    """1 where a k x k block around a seed covers the element: a stride-1 max-pool of kernel ``k`` (padding
    ``k // 2``, cropped to the input's size) of a 0/1 map, computed as separable box sums by cumulative sums.

    Why not ``F.max_pool2d``: its CPU cost grows with k**2 per element and made DropBlock the slowest part of a
    ResNet-20 step; a box sum of 0/1 values is exact in float32 and costs the same for every k.
    """
    before, after = k // 2, k - 1 - k // 2  # max_pool2d's window around each element (even k: one more before)
    padded = F.pad(seeds, (before, after, before, after))
    along_w = F.pad(padded.cumsum(-1), (1, 0))
    sums = along_w[..., k:] - along_w[..., :-k]
    along_h = F.pad(sums.cumsum(-2), (0, 0, 1, 0))
    sums = along_h[..., k:, :] - along_h[..., :-k, :]
    return (sums > 0.5).to(seeds.dtype)


def drop_block(
    x: torch.Tensor, drop_prob: float, block_size: int = 7, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero ``block_size`` x ``block_size`` blocks of ``x`` (N, C, H, W) and rescale so the mean is kept.

    The block size is clipped to ``k = min(block_size, H, W)``. Block centres (seeds) are Bernoulli(gamma)
    in the region where a whole block fits, with
    ``gamma = drop_prob / k**2 * (H * W) / ((H - k + 1) * (W - k + 1))``, independently per sample and channel;
    a stride-1 max-pool of kernel ``k`` (padding ``k // 2``) grows seeds into blocks, and the kept elements are
    scaled by ``numel / kept``. Overlapping blocks make the dropped fraction slightly below ``drop_prob``
    (about ``1 - exp(-drop_prob)``). Returns ``x`` itself when ``drop_prob == 0``.
    """
    _check_input(x)
    drop_prob = _check_drop_prob(drop_prob)
    block_size = _check_block_size(block_size)
    if drop_prob == 0.0 or x.numel() == 0:
        return x
    _, _, h, w = x.shape
    k = min(block_size, h, w)
    gamma = min(1.0, drop_prob / k**2 * (h * w) / ((h - k + 1) * (w - k + 1)))
    # Seed s grows into the block [s - k//2, s - k//2 + k - 1]; it fits iff (k-1)//2 <= s < H - k//2.
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    valid_r = (rows >= (k - 1) // 2) & (rows < h - k // 2)
    valid_c = (cols >= (k - 1) // 2) & (cols < w - k // 2)
    valid = valid_r[:, None] & valid_c[None, :]
    noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    seeds = ((noise < gamma) & valid).to(torch.float32)
    mask = 1.0 - grow_blocks(seeds, k)
    scale = mask.numel() / mask.sum().clamp_min(1.0)  # all dropped -> mask is 0 everywhere, any scale gives 0
    return x * (mask * scale).to(x.dtype)


def set_drop_prob(model: nn.Module, drop_prob: float) -> int:
    """Set ``drop_prob`` on every :class:`DropBlock2d` in ``model``; returns how many were set."""
    drop_prob = _check_drop_prob(drop_prob)
    n = 0
    for module in model.modules():
        if isinstance(module, DropBlock2d):
            module.drop_prob = drop_prob
            n += 1
    return n


def linear_drop_prob(step: int, ramp_steps: int, final_drop_prob: float, start_drop_prob: float = 0.0) -> float:
    """Linear ramp from ``start_drop_prob`` at step 0 to ``final_drop_prob`` at ``ramp_steps``, constant after."""
    final_drop_prob = _check_drop_prob(final_drop_prob)
    start_drop_prob = _check_drop_prob(start_drop_prob)
    if ramp_steps <= 0:
        return final_drop_prob
    t = min(max(step, 0), ramp_steps) / ramp_steps
    return start_drop_prob + t * (final_drop_prob - start_drop_prob)


class DropBlock2d(nn.Module):
    """DropBlock on (N, C, H, W) feature maps; the identity (``x`` itself) in eval mode or when ``drop_prob == 0``.

    ``drop_prob`` is a plain attribute (validated on assignment) so that a scheduler can ramp it.
    """

    def __init__(self, drop_prob: float = 0.1, block_size: int = 7) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = _check_block_size(block_size)

    @property
    def drop_prob(self) -> float:
        return self._drop_prob

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self._drop_prob = _check_drop_prob(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        if not self.training or self.drop_prob == 0.0:
            return x
        return drop_block(x, self.drop_prob, self.block_size)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"
