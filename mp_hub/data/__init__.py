"""Data for the recipes: load a Hub / local / imagefolder dataset, decode it once to uint8 tensors,
augment batches on tensors (no torchvision), and split a source dataset into meta-training tasks."""

from .loading import (
    ImageTensors,
    augment_batch,
    check_columns,
    decode_images,
    load_image_dataset,
    normalize,
    samples_per_class_subset,
)

__all__ = [
    "ImageTensors",
    "augment_batch",
    "check_columns",
    "decode_images",
    "load_image_dataset",
    "normalize",
    "samples_per_class_subset",
]
