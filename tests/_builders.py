"""Tiny models shared by the test modules (`from _builders import ...`: pytest puts tests/ on sys.path)."""

import torch
from torch import nn

from mp_hub import MetaPerturb


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


class LayerNormNet(nn.Module):
    """ConvNet's layout with a LayerNorm over the channels in place of each BatchNorm: conv3x3 (`blocks.{i}.0`),
    an Identity where a site goes (`blocks.{i}.1`), LayerNorm per pixel (`blocks.{i}.2.norm`), GELU; then a 3-way
    head (logits ×20: confident, so that the MC average and one mean pass differ clearly)."""

    def __init__(self, widths=(8, 8), seed=0):
        super().__init__()
        torch.manual_seed(seed)
        chans = (3, *widths)
        self.blocks = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.Identity(), _PixelLayerNorm(b), nn.GELU())
              for a, b in zip(chans, widths)]
        )  # fmt: skip
        self.head = nn.Linear(widths[-1], 3)
        with torch.no_grad():
            self.head.weight.mul_(20)

    def forward(self, x):
        return self.head(self.blocks(x).mean((2, 3)))


class _PixelLayerNorm(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# --- shared by the mean-mode calibration tests ---------------------------------------------------------------

TARGETS = dict(targets=r"blocks\.\d+\.1", spatial_norm=32)  # sites after each BN: BN 1 reads site 0's output


def _noisy_phi(seed=0) -> MetaPerturb:
    torch.manual_seed(seed)
    phi = MetaPerturb()
    with torch.no_grad():  # strong noise: mean mode then differs clearly from the trained statistics
        for p in phi.parameters():
            p.mul_(30)
    return phi


def _trained(model: nn.Module, steps: int = 5) -> nn.Module:
    """A few training-mode passes: BatchNorm statistics of noisy activations, as after training with φ."""
    model.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(16, 3, 32, 32, generator=gen))
    return model.eval()


def _images(n=64, seed=2):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
