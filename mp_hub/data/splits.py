"""A classification dataset's train and evaluation splits: chosen, subsampled, with one label map, then decoded.

`load_splits` picks `train` and the first of `validation` / `valid` / `test` (else holds out a seeded fraction of
train, as transformers' image-classification example), applies the subsets, and maps plain integer labels to
0..K-1. Both splits then become uint8 (N, 3, size, size) images (`ClassificationData`): `lazy_splits` decodes a
batch when it is asked for (what the transfer recipe does: any dataset size), `decode_splits` decodes everything
at once into memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from datasets import ClassLabel, Dataset, DatasetDict

from ..errors import DataError
from .loading import (
    ImageTensors,
    LazyImages,
    check_columns,
    check_labels,
    decode_images,
    load_image_dataset,
    samples_per_class_subset,
)

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "valid", "test")


@dataclass
class Splits:
    """The chosen (not yet decoded) train and evaluation splits, their columns and the class names."""

    train: Dataset
    eval: Dataset
    labels: list[str]
    remap: dict[int, int] | None
    eval_split: str
    dataset_id: str
    image_column: str = "image"
    label_column: str = "label"


@dataclass
class ClassificationData:
    """Train and evaluation images (in memory or decoded on demand: both have `len` and `subset(indices)`), the
    class names, and the normalisation the model expects."""

    train: ImageTensors | LazyImages
    eval: ImageTensors | LazyImages
    labels: list[str]
    eval_split: str
    dataset_id: str
    image_size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)


def label_map(train: Dataset, evaluation: Dataset, column: str) -> tuple[list[str], dict[int, int] | None]:
    """Class names, and a map to 0..K-1 when the labels are plain integers that are not already contiguous."""
    feature = train.features[column]
    if isinstance(feature, ClassLabel):
        return list(feature.names), None
    values = sorted(set(train[column]) | set(evaluation[column]))
    if values == list(range(len(values))):
        return [str(v) for v in values], None
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


def load_splits(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    dataset_dir: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    train_val_split: float = 0.15,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    samples_per_class: int | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    token: str | None = None,
) -> Splits:
    """Load a Hub id / local Hub-layout folder / imagefolder, pick its splits and apply the subsets (seeded)."""
    ds: DatasetDict = load_image_dataset(
        dataset_name=dataset_name,
        dataset_dir=dataset_dir,
        train_dir=train_dir,
        validation_dir=validation_dir,
        dataset_config_name=dataset_config_name,
        cache_dir=cache_dir,
        token=token,
    )
    if "train" not in ds:
        raise DataError(f"the dataset has no 'train' split; its splits are {list(ds)}")
    eval_split = next((s for s in EVAL_SPLITS if s in ds), None)
    if eval_split is None:
        split = ds["train"].train_test_split(train_val_split, seed=seed)
        ds = DatasetDict(train=split["train"], validation=split["test"])
        eval_split = "validation"
    train, evaluation = ds["train"], ds[eval_split]
    for name, split in (("train", train), (eval_split, evaluation)):
        check_columns(split, image_column, label_column)
        check_labels(split, label_column, name)
    names, remap = label_map(train, evaluation, label_column)
    if max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(max_train_samples, len(train))))
    if max_eval_samples is not None:
        evaluation = evaluation.shuffle(seed=seed).select(range(min(max_eval_samples, len(evaluation))))
    if samples_per_class is not None:
        labels = torch.as_tensor(train[label_column])
        train = train.select(samples_per_class_subset(labels, samples_per_class, seed).tolist())
    dataset_id = dataset_name or str(dataset_dir or train_dir)
    return Splits(train, evaluation, names, remap, eval_split, dataset_id, image_column, label_column)


def decode_splits(
    splits: Splits,
    image_size: int,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> ClassificationData:
    """Decode both splits once to uint8 (N, 3, image_size, image_size) tensors, labels mapped to 0..K-1."""

    def decode(split: Dataset) -> ImageTensors:
        tensors = decode_images(split, splits.image_column, splits.label_column, image_size)
        if splits.remap is not None:
            tensors.labels = torch.as_tensor([splits.remap[int(v)] for v in tensors.labels.tolist()])
        return tensors

    return _classification_data(splits, decode(splits.train), decode(splits.eval), image_size, mean, std)


def lazy_splits(
    splits: Splits,
    image_size: int,
    mean: tuple[float, ...] = (0.5, 0.5, 0.5),
    std: tuple[float, ...] = (0.5, 0.5, 0.5),
) -> ClassificationData:
    """Both splits as `LazyImages`: each batch is decoded when asked for, so memory does not grow with the dataset;
    the images are bit-identical to `decode_splits`'."""

    def open_lazily(split: Dataset) -> LazyImages:
        return LazyImages(split, splits.image_column, splits.label_column, image_size, splits.remap)

    return _classification_data(splits, open_lazily(splits.train), open_lazily(splits.eval), image_size, mean, std)


def _classification_data(
    splits: Splits,
    train: ImageTensors | LazyImages,
    evaluation: ImageTensors | LazyImages,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> ClassificationData:
    data = ClassificationData(
        train=train,
        eval=evaluation,
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
