"""Data of the transfer recipe: pick the splits, subsample, decode once, and serve step-indexed batches.

Every training batch is a pure function of (seed, step, process): the epoch's permutation comes from a
generator seeded with (seed, epoch), the augmentation from one seeded with (seed, step, rank). A run resumed
at step t therefore sees exactly the batches an uninterrupted run sees, with no data-loader state to save.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from datasets import ClassLabel, DatasetDict

from ..data import (
    ImageTensors,
    augment_batch,
    check_columns,
    check_labels,
    decode_images,
    derive_seed,
    load_image_dataset,
    normalize,
    samples_per_class_subset,
)
from ..datasets import FASHION_MNIST_TINY
from ..errors import DataError

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "valid", "test")


@dataclass
class TransferData:
    train: ImageTensors
    eval: ImageTensors
    labels: list[str]
    eval_split: str
    dataset_id: str
    image_size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)


def _dataset_id(args) -> str:
    return args.dataset_name or str(args.dataset_dir or args.train_dir)


@dataclass
class Splits:
    """The chosen (not yet decoded) train and evaluation splits, and the class names."""

    train: object
    eval: object
    labels: list[str]
    remap: dict[int, int] | None
    eval_split: str
    dataset_id: str


def prepare_splits(args) -> Splits:
    """Load the dataset (default: Fashion-MNIST tiny), pick the splits, apply --max_*_samples, --samples_per_class."""
    if not (args.dataset_name or args.dataset_dir or args.train_dir):
        args.dataset_dir = str(FASHION_MNIST_TINY)
    ds: DatasetDict = load_image_dataset(
        dataset_name=args.dataset_name,
        dataset_dir=args.dataset_dir,
        train_dir=args.train_dir,
        validation_dir=args.validation_dir,
        dataset_config_name=args.dataset_config_name,
        cache_dir=args.cache_dir,
        token=args.hub_token,
    )
    if "train" not in ds:
        raise DataError(f"the dataset has no 'train' split; its splits are {list(ds)}")
    eval_split = next((s for s in EVAL_SPLITS if s in ds), None)
    if eval_split is None:
        # As in the transformers example: hold out --train_val_split of train, seeded.
        split = ds["train"].train_test_split(args.train_val_split, seed=args.seed)
        ds = DatasetDict(train=split["train"], validation=split["test"])
        eval_split = "validation"
    train, evaluation = ds["train"], ds[eval_split]
    for name, split in (("train", train), (eval_split, evaluation)):
        check_columns(split, args.image_column_name, args.label_column_name)
        check_labels(split, args.label_column_name, name)
    names, remap = _label_map(train, evaluation, args.label_column_name)
    if args.max_train_samples is not None:
        train = train.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(train))))
    if args.max_eval_samples is not None:
        evaluation = evaluation.shuffle(seed=args.seed).select(range(min(args.max_eval_samples, len(evaluation))))
    if args.samples_per_class is not None:
        labels = torch.as_tensor(train[args.label_column_name])
        train = train.select(samples_per_class_subset(labels, args.samples_per_class, args.seed).tolist())
    return Splits(train, evaluation, names, remap, eval_split, _dataset_id(args))


def decode_splits(splits: Splits, args, image_size: int, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> TransferData:
    """Decode both splits once to uint8 (N, 3, image_size, image_size) tensors."""

    def decode(split):
        tensors = decode_images(split, args.image_column_name, args.label_column_name, image_size)
        if splits.remap is not None:
            tensors.labels = torch.as_tensor([splits.remap[int(v)] for v in tensors.labels.tolist()])
        return tensors

    data = TransferData(
        train=decode(splits.train),
        eval=decode(splits.eval),
        labels=splits.labels,
        eval_split=splits.eval_split,
        dataset_id=splits.dataset_id,
        image_size=image_size,
        mean=tuple(mean),
        std=tuple(std),
    )
    logger.info(
        "data: %d train / %d %s images, %d classes, %dpx",
        len(data.train),
        len(data.eval),
        data.eval_split,
        len(data.labels),
        image_size,
    )
    return data


def _label_map(train, evaluation, column: str) -> tuple[list[str], dict[int, int] | None]:
    """Class names, and a map to 0..K-1 when the labels are plain integers that are not already contiguous."""
    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names), None
    values = sorted(set(train[column]) | set(evaluation[column]))
    if values == list(range(len(values))):
        return [str(v) for v in values], None
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


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
        data: TransferData,
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


def calibration_batches(data: TransferData, batch_size: int, seed: int):
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

    def __init__(self, data: TransferData):
        self.images, self.labels, self.mean, self.std = data.eval.images, data.eval.labels, data.mean, data.std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return renormalize(normalize(self.images[i : i + 1]), self.mean, self.std)[0], self.labels[i]
