"""Batches of a classification dataset (`ClassificationData`, in memory or decoded on demand): step-indexed
training batches and their DataLoader, calibration batches and the evaluation images.

Every training batch is a pure function of (seed, step, process): the epoch's permutation comes from a generator
seeded with (seed, epoch), the augmentation from one seeded with (seed, step, rank). A run resumed at step t
therefore sees exactly the batches an uninterrupted run sees, with no data-loader state to save, and DataLoader
workers (`train_loader`), however many, make the same batches as the main process would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from ..errors import ConfigError, DataError
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


class TrainBatches(torch.utils.data.Dataset):
    """Step-indexed training batches for one process of `world_size` (drop-last epochs): `batches(step)` (or
    `batches[step]`, for a DataLoader) decodes and augments only this process's share of the step's images."""

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

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self(step)


def train_loader(
    batches: TrainBatches, first_step: int, stop_step: int, *, num_workers: int = 0, pin_memory: bool = False
) -> torch.utils.data.DataLoader:
    """The batches of steps `first_step`, ..., `stop_step` − 1, in order, made ahead by `num_workers` processes
    (0: by this one, when asked for). A batch depends on its step only, so the number of workers and a resume at
    `first_step` change no batch."""
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    return torch.utils.data.DataLoader(
        batches,
        batch_size=None,  # each item is already a batch
        sampler=range(first_step, stop_step),
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator(),  # the workers' base seed: never drawn from (and shifting) torch's global RNG
    )


def calibration_batches(data: ClassificationData, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Training images in a seeded shuffled order (a class-sorted batch would understate the variance),
    un-augmented and normalised like evaluation: the input of `mp_hub.calibrate_mean_mode`."""
    gen = torch.Generator().manual_seed(derive_seed(seed, "calibration"))
    order = torch.randperm(len(data.train), generator=gen)
    for start in range(0, len(order), batch_size):
        images = data.train.subset(order[start : start + batch_size]).images
        yield renormalize(normalize(images), data.mean, data.std)


class EvalImages(torch.utils.data.Dataset):
    """The evaluation split for a DataLoader (that accelerate shards): normalised as a batch is fetched
    (`__getitems__`: one decode per batch when the split is decoded on demand), never held as floats."""

    def __init__(self, data: ClassificationData):
        self.images, self.mean, self.std = data.eval, data.mean, data.std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = self.images.subset(indices)
        x = renormalize(normalize(batch.images), self.mean, self.std)
        return list(zip(x, batch.labels))
