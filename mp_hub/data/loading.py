"""Loading image-classification datasets the way the transformers examples do, offline-friendly.

Images become uint8 tensors (N, 3, S, S) — grayscale converted to 3 channels, resized to S — either all at once
(`decode_images`: `ImageTensors`, in memory) or batch by batch as they are asked for (`LazyImages`: a `datasets`
pipeline with `with_transform`, for data that does not fit in RAM); both are augmented per batch on tensors with
an explicit `torch.Generator`, so a resumed run reproduces the data order and the augmentation exactly.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset
from PIL import Image as PILImage

from ..errors import DataError

logger = logging.getLogger(__name__)

# Images are mapped to [-1, 1]; the same normalisation everywhere (meta-training and transfer).
MEAN, STD = 0.5, 0.5


def load_image_dataset(
    *,
    dataset_name: str | None = None,
    dataset_dir: str | Path | None = None,
    train_dir: str | Path | None = None,
    validation_dir: str | Path | None = None,
    dataset_config_name: str | None = None,
    cache_dir: str | None = None,
    token: str | bool | None = None,
) -> DatasetDict:
    """A Hub id (`--dataset_name`), a local Hub-layout folder (`--dataset_dir`) or imagefolders (`--train_dir`)."""
    given = [
        n for n, v in (("dataset_name", dataset_name), ("dataset_dir", dataset_dir), ("train_dir", train_dir)) if v
    ]
    if len(given) != 1:
        raise DataError(f"pass exactly one of --dataset_name, --dataset_dir, --train_dir (got {given or 'none'})")
    if validation_dir and not train_dir:
        raise DataError("--validation_dir goes with --train_dir")
    if dataset_dir is not None:
        if not Path(dataset_dir).is_dir():
            raise DataError(f"--dataset_dir {dataset_dir} is not a directory")
        return _load_nonempty(f"--dataset_dir {dataset_dir}", str(dataset_dir), cache_dir=cache_dir)
    if train_dir is not None:
        files = {"train": str(Path(train_dir) / "**")}
        if validation_dir:
            files["validation"] = str(Path(validation_dir) / "**")
        for split, folder in (("train", train_dir), ("validation", validation_dir)):
            if folder and not Path(folder).is_dir():
                raise DataError(f"--{split}_dir {folder} is not a directory")
        return _load_nonempty(f"--train_dir {train_dir}", "imagefolder", data_files=files, cache_dir=cache_dir)
    try:
        return _load_nonempty(
            f"dataset '{dataset_name}'", dataset_name, dataset_config_name, cache_dir=cache_dir, token=token
        )
    except ConnectionError as err:
        raise DataError(f"dataset '{dataset_name}' is not cached and the Hub is unreachable (offline?): {err}") from err
    except FileNotFoundError as err:
        raise DataError(f"dataset '{dataset_name}' not found locally or on the Hub: {err}") from err


def _load_nonempty(source: str, *args, **kwargs) -> DatasetDict:
    try:
        return load_dataset(*args, **kwargs)
    except ValueError as err:
        if "corresponds to no data" not in str(err):  # `datasets`' words for a split of zero rows
            raise
        raise DataError(f"{source}: a split is empty ({err})") from err


def check_columns(dataset: Dataset, image_column: str, label_column: str, extra: tuple[str, ...] = ()) -> None:
    """Named columns exist, the image column holds images, the label column holds class ids."""
    columns = dataset.column_names
    for role, name in (("image", image_column), ("label", label_column), *(("task", e) for e in extra)):
        if name not in columns:
            raise DataError(f"the dataset has no {role} column '{name}'; its columns are {columns}")
    feature = dataset.features[image_column]
    if not isinstance(feature, Image):
        raise DataError(
            f"column '{image_column}' holds {feature!r}, not images; pass the image column with --image_column_name"
        )
    label = dataset.features[label_column]
    if not isinstance(label, ClassLabel) and getattr(label, "dtype", "") not in {"int64", "int32", "int16", "int8"}:
        raise DataError(f"column '{label_column}' holds {label!r}, not integer class labels")


def check_labels(dataset: Dataset, label_column: str, split: str) -> None:
    """The split has images and every label is a class id >= 0: `datasets` writes -1 for an unlabelled image
    (a test split without answers), which would otherwise be scored as a class of its own."""
    if len(dataset) == 0:
        raise DataError(f"the '{split}' split is empty")
    labels = np.asarray(dataset[label_column])
    unlabelled = int((labels < 0).sum())
    if unlabelled:
        raise DataError(
            f"the '{split}' split has {unlabelled} of {len(labels)} images with a negative label in column "
            f"'{label_column}' (unlabelled, e.g. a test split without answers); use a labelled split"
        )


def label_names(dataset: Dataset, label_column: str) -> list[str]:
    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        return list(feature.names)
    return [str(i) for i in sorted(set(dataset[label_column]))]


@dataclass
class ImageTensors:
    """A decoded split: uint8 images (N, 3, S, S) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> ImageTensors:
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageTensors(self.images[index], self.labels[index])


def _to_uint8(image: PILImage.Image, size: int) -> np.ndarray:
    if image.mode == "L" and image.size != (size, size):  # one band to resize, not three: the same bytes, sooner
        image = image.resize((size, size), PILImage.BILINEAR)
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), PILImage.BILINEAR)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _decode_rows(images: list, image_column: str, image_size: int, first_row: int | None = None) -> np.ndarray:
    """PIL images → uint8 (B, 3, image_size, image_size); anything else is a DataError naming the column."""
    out = np.empty((len(images), 3, image_size, image_size), dtype=np.uint8)
    for offset, image in enumerate(images):
        if not isinstance(image, PILImage.Image):
            where = f" row {first_row + offset}" if first_row is not None else ""
            raise DataError(f"column '{image_column}'{where} is {type(image).__name__}, not an image")
        out[offset] = _to_uint8(image, image_size)
    return out


def decode_images(dataset: Dataset, image_column: str, label_column: str, image_size: int) -> ImageTensors:
    """Decode every image once (grayscale → 3 channels, resized to image_size)."""
    if len(dataset) == 0:
        raise DataError("the dataset split is empty")
    images = np.empty((len(dataset), 3, image_size, image_size), dtype=np.uint8)
    for start in range(0, len(dataset), 1024):
        batch = dataset[start : start + 1024][image_column]
        images[start : start + len(batch)] = _decode_rows(batch, image_column, image_size, start)
    labels = torch.as_tensor(np.asarray(dataset[label_column]), dtype=torch.long)
    return ImageTensors(torch.from_numpy(images), labels)


def _decode_transform(batch: dict, image_column: str, image_size: int) -> dict:
    return {"images": _decode_rows(batch[image_column], image_column, image_size)}


class LazyImages:
    """A split whose images are decoded only when a batch asks for them: `subset(indices)` reads those rows through
    a `datasets` transform (`with_transform`) and gives `ImageTensors`, as `ImageTensors.subset` does.

    Only the labels (int64, mapped to 0..K-1 by `remap`) are held in memory; the images stay in the dataset's
    memory-mapped Arrow files, which DataLoader workers share. Picklable (the transform is a module function).
    """

    def __init__(
        self,
        dataset: Dataset,
        image_column: str,
        label_column: str,
        image_size: int,
        remap: dict[int, int] | None = None,
    ):
        if len(dataset) == 0:
            raise DataError("the dataset split is empty")
        labels = np.asarray(dataset[label_column])
        if remap is not None:
            labels = np.asarray([remap[int(v)] for v in labels])
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.image_size = image_size
        transform = functools.partial(_decode_transform, image_column=image_column, image_size=image_size)
        self.dataset = dataset.select_columns([image_column]).with_transform(transform)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> ImageTensors:
        index = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        images = self.dataset[index.tolist()]["images"]
        return ImageTensors(torch.from_numpy(images), self.labels[index])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) → float in [-1, 1]."""
    return (images.float() / 255.0 - MEAN) / STD


def augment_batch(
    images: torch.Tensor, generator: torch.Generator, *, padding: int = 4, flip: bool = True
) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, on a uint8 batch; returns normalised floats.

    Zero padding is applied to the normalised image's black (0 in uint8 → −1), as torchvision's
    RandomCrop(padding) does on PIL images.
    """
    batch, _, height, width = images.shape
    out = images
    if padding > 0:
        padded = torch.nn.functional.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
        rows = (dy[:, None] + torch.arange(height))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(width))[:, None, None, :]
        out = padded[torch.arange(batch)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    if flip:
        flips = torch.rand(batch, generator=generator) < 0.5
        out = torch.where(flips[:, None, None, None], out.flip(-1), out)
    return normalize(out)


def samples_per_class_subset(labels: torch.Tensor, samples_per_class: int, seed: int) -> torch.Tensor:
    """Indices of a class-balanced subset (s-CIFAR style), deterministic from `seed`."""
    if samples_per_class < 1:
        raise DataError(f"--samples_per_class must be >= 1, got {samples_per_class}")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        if members.numel() < samples_per_class:
            raise DataError(
                f"--samples_per_class {samples_per_class} is larger than class {cls}, "
                f"which has {members.numel()} images"
            )
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:samples_per_class]])
    return torch.cat(chosen).sort().values
