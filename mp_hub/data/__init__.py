"""Data for the recipes: load a Hub / local / imagefolder dataset, decode it once to uint8 tensors,
augment batches on tensors (no torchvision), and split a source dataset into meta-training tasks."""

from .loading import (
    ImageTensors,
    augment_batch,
    check_columns,
    check_labels,
    decode_images,
    load_image_dataset,
    normalize,
    samples_per_class_subset,
)
from .tasks import SPLIT_SCHEMES, TaskData, TaskSpec, class_lists_hash, derive_seed, split_tasks, task_images

__all__ = [
    "ImageTensors",
    "SPLIT_SCHEMES",
    "TaskData",
    "TaskSpec",
    "augment_batch",
    "check_columns",
    "check_labels",
    "class_lists_hash",
    "decode_images",
    "derive_seed",
    "load_image_dataset",
    "normalize",
    "samples_per_class_subset",
    "split_tasks",
    "task_images",
]
