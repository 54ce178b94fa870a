"""Tiny models shared by the test modules (`from _builders import ...`: pytest puts tests/ on sys.path)."""

import torch
from torch import nn


class ConvNet(nn.Module):
    """A plain nn.Module (no config, so attach needs targets=): conv3x3-BN-ReLU blocks (`blocks.{i}.{0,1,2}`) of
    `widths` channels on RGB input, then a 3-way Linear `head` on the mean-pooled last feature map.

    `seed`: torch's global RNG is seeded with it just before the layers are built (None: left as it is).
    """

    def __init__(self, widths=(8, 8), seed=0):
        super().__init__()
        if seed is not None:
            torch.manual_seed(seed)
        chans = (3, *widths)
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()) for a, b in zip(chans, widths)]
        )
        self.head = nn.Linear(widths[-1], 3)

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))
