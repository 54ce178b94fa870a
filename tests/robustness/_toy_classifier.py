"""A tiny trained classifier for the robustness tests: `_builders.ConvNet` (two conv-BN-ReLU blocks of 4 channels)
with φ after each BatchNorm, trained on three classes of 8×8 images told apart by which colour channel is brighter
(a margin that an attack of a tenth of the pixel range can cross)."""

import torch
import torch.nn.functional as F
from _builders import ConvNet

import mp_hub

CLASSES, SIZE = 3, 8


def toy_pixels(n: int, seed: int, noise: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """(images in [0, 1] of shape (n, 3, 8, 8), labels): class c has channel c at 0.6, the others at 0.4, plus
    Gaussian noise of std `noise` per pixel."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    images = torch.full((n, 3, SIZE, SIZE), 0.4)
    images[torch.arange(n), labels] = 0.6
    return (images + noise * torch.randn(images.shape, generator=gen)).clamp(0, 1), labels


def train_toy_model():
    """(model in eval mode, its handle, test pixels, test labels): 60 Adam steps on [-1, 1] inputs, φ's noise on."""
    model = ConvNet(widths=(4, 4), seed=0)
    phi = mp_hub.MetaPerturb.from_pretrained("metaperturb-glyphs10-resnet20")
    handle = mp_hub.attach(model, phi, targets=r"blocks\.\d+\.1", spatial_norm=SIZE)
    optimizer = torch.optim.Adam(handle.model_parameters(), lr=0.03)
    train, train_labels = toy_pixels(192, seed=1)
    torch.manual_seed(0)
    model.train()
    for step in range(60):
        rows = torch.arange(32) + 32 * (step % 6)
        F.cross_entropy(model((train[rows] - 0.5) / 0.5), train_labels[rows]).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    pixels, labels = toy_pixels(48, seed=2)
    return model, handle, pixels, labels
