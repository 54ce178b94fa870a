"""Batches of a decoded classification dataset (`ClassificationData`): step-indexed training batches,
calibration batches and the evaluation images.

Every training batch is a pure function of (seed, step, process): the epoch's permutation comes from a generator
seeded with (seed, epoch), the augmentation from one seeded with (seed, step, rank). A run resumed at step t
therefore sees exactly the batches an uninterrupted run sees, with no data-loader state to save.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from ..errors import DataError
from .loading import augment_batch, normalize
from .splits import ClassificationData
from .tasks import derive_seed

logger = logging.getLogger(__name__)


def renormalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[-1, 1] images (mp_hub's normalisation) → (x01 − mean) / std, e.g. a pretrained model's ImageNet stats."""
    if tuple(mean) == (0.5, 0.5, 0.5) and tuple(std) == (0.5, 0.5, 0.5):
        return x
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x * 0.5 + 0.5) - m) / s


class TrainBatches:
    """Step-indexed training batches for one process of `world_size` (drop-last epochs)."""

    def __init__(
        self,
        data: ClassificationData,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        flip: bool = True,
        padding: int = 4,
    ):
        n = len(data.train)
        if n < world_size:
            raise DataError(f"{n} training images cannot be shared by {world_size} processes")
        if batch_size * world_size > n:
            logger.warning(
                "batch size %d × %d processes > %d training images: using %d per process",
                batch_size,
                world_size,
                n,
                n // world_size,
            )
            batch_size = n // world_size
        self.data, self.batch_size, self.seed, self.rank, self.world_size = data, batch_size, seed, rank, world_size
        self.flip, self.padding = flip, padding
        self.steps_per_epoch = n // (batch_size * world_size)
        self._epoch, self._perm = None, None

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", epoch))
            self._epoch, self._perm = epoch, torch.randperm(len(self.data.train), generator=gen)
        glob = self.batch_size * self.world_size
        index = self._perm[i * glob + self.rank * self.batch_size :][: self.batch_size]
        batch = self.data.train.subset(index)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "augment", step, self.rank))
        x = augment_batch(batch.images, gen, padding=self.padding, flip=self.flip)
        return renormalize(x, self.data.mean, self.data.std), batch.labels


def calibration_batches(data: ClassificationData, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Training images in a seeded shuffled order (a class-sorted batch would understate the variance),
    un-augmented and normalised like evaluation: the input of `mp_hub.calibrate_mean_mode`."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "calibration"))
    order = torch.randperm(len(data.train), generator=gen)
    for start in range(0, len(order), batch_size):
        images = data.train.subset(order[start : start + batch_size]).images
        yield renormalize(normalize(images), data.mean, data.std)


class EvalImages(torch.utils.data.Dataset):
    """The evaluation split for a DataLoader (that accelerate shards): kept as uint8, normalised per image, so a
    large split at 224 px does not need 4 bytes per pixel in memory."""

    def __init__(self, data: ClassificationData):
        self.images, self.labels, self.mean, self.std = data.eval.images, data.eval.labels, data.mean, data.std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return renormalize(normalize(self.images[i : i + 1]), self.mean, self.std)[0], self.labels[i]
