"""Data for the recipes: load a Hub / local / imagefolder dataset, pick its splits and decode them to uint8
tensors (on demand, batch by batch, or once into memory), serve step-indexed batches augmented on tensors (no
torchvision) through a DataLoader, and split a source dataset into meta-training tasks."""

from .batches import EvalImages, TrainBatches, calibration_batches, renormalize, train_loader
from .loading import (
    ImageTensors,
    LazyImages,
    augment_batch,
    check_columns,
    check_labels,
    decode_images,
    load_image_dataset,
    normalize,
    samples_per_class_subset,
)
from .splits import EVAL_SPLITS, ClassificationData, Splits, decode_splits, label_map, lazy_splits, load_splits
from .tasks import (
    SPLIT_SCHEMES,
    TaskData,
    TaskSpec,
    class_lists_hash,
    derive_seed,
    recorded_split,
    recorded_task_column,
    split_tasks,
    task_images,
)

__all__ = [
    "EVAL_SPLITS",
    "SPLIT_SCHEMES",
    "ClassificationData",
    "EvalImages",
    "ImageTensors",
    "LazyImages",
    "Splits",
    "TaskData",
    "TaskSpec",
    "TrainBatches",
    "augment_batch",
    "calibration_batches",
    "check_columns",
    "check_labels",
    "class_lists_hash",
    "decode_images",
    "decode_splits",
    "derive_seed",
    "label_map",
    "lazy_splits",
    "load_image_dataset",
    "load_splits",
    "normalize",
    "renormalize",
    "samples_per_class_subset",
    "recorded_split",
    "recorded_task_column",
    "split_tasks",
    "task_images",
    "train_loader",
]
