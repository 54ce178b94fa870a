"""Meta-training tasks from one source split: which rows and classes each task has, and its batches.

Three ways to make tasks (all deterministic from the seed and the labels only, never from the world size):

- `task_column`: one task per value of a column (glyphs10 has `task`);
- `disjoint`: the classes (sorted ids) cut into `num_tasks` contiguous, class-disjoint groups;
- `halves`: the authors' scheme (their `split_dataset.py`): `num_tasks / 2` contiguous class groups; each
  group's images are shuffled and cut in two halves A, B; task 2g trains on A and validates on B, task 2g+1
  the other way round.

For `task_column` and `disjoint`, each task's images are shuffled and cut in two halves: train, valid.
Labels are remapped per task to 0..k-1 in the order of the task's sorted class ids (the authors'
`label_list.index(y)`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset

from ..errors import ConfigError, DataError
from .loading import ImageTensors, augment_batch, decode_images

logger = logging.getLogger(__name__)

SPLIT_SCHEMES = ("disjoint", "halves")


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed for one stream (e.g. `derive_seed(seed, "augment", task)`): independent of rank and order."""
    digest = hashlib.sha256(json.dumps([int(seed), *map(str, keys)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class TaskSpec:
    """One task: its position, a name, its classes (source label ids, sorted) and its rows in the source split."""

    index: int
    name: str
    classes: tuple[int, ...]
    train_rows: np.ndarray
    valid_rows: np.ndarray

    @property
    def num_labels(self) -> int:
        return len(self.classes)


def _shuffled_halves(rows: np.ndarray, seed: int, *keys: object) -> tuple[np.ndarray, np.ndarray]:
    generator = torch.Generator().manual_seed(derive_seed(seed, "split", *keys))
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    half = len(order) // 2  # as the authors: the first half is n // 2 rows
    return np.sort(order[:half]), np.sort(order[half:])


def _class_groups(classes: np.ndarray, num_groups: int, what: str) -> list[np.ndarray]:
    if len(classes) < num_groups:
        raise DataError(
            f"the dataset has {len(classes)} classes, fewer than the {num_groups} {what} asked for: "
            "lower --num_tasks (or use a dataset with more classes)"
        )
    return np.array_split(classes, num_groups)  # contiguous; sizes differ by at most one


TASK_COLUMN_SPLIT = "task_column:"


def recorded_split(split_scheme: str, task_column: str | None) -> str:
    """How a meta-training run records its tasks' split: `task_column:<column>` for tasks from a column, else the
    split scheme (`recorded_task_column` reads the column back)."""
    return f"{TASK_COLUMN_SPLIT}{task_column}" if task_column else split_scheme


def recorded_task_column(split: str) -> str | None:
    """The task column a `recorded_split` names, or None where it records a split scheme."""
    return split[len(TASK_COLUMN_SPLIT) :] if split.startswith(TASK_COLUMN_SPLIT) else None


def split_tasks(
    labels: np.ndarray | list[int],
    *,
    seed: int,
    num_tasks: int | None = None,
    split_scheme: str = "halves",
    task_ids: np.ndarray | list[int] | None = None,
    task_names: list[str] | None = None,
) -> list[TaskSpec]:
    """Tasks from the labels of a split (and, with `task_ids`, the values of a task column)."""
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))
    specs: list[TaskSpec] = []
    if task_ids is not None:
        task_ids = np.asarray(task_ids)
        values = np.unique(task_ids)
        if num_tasks is not None and num_tasks != len(values):
            raise ConfigError(f"--num_tasks {num_tasks} disagrees with the task column, which has {len(values)} tasks")
        for t, value in enumerate(values):
            members = rows[task_ids == value]
            train, valid = _shuffled_halves(members, seed, "task", t)
            name = task_names[int(value)] if task_names is not None else str(value)
            specs.append(TaskSpec(t, name, tuple(np.unique(labels[members]).tolist()), train, valid))
    else:
        if split_scheme not in SPLIT_SCHEMES:
            raise ConfigError(f"--split_scheme must be one of {SPLIT_SCHEMES}, got {split_scheme!r}")
        if num_tasks is None or num_tasks < 1:
            raise ConfigError(f"--num_tasks must be a positive int (or pass --task_column), got {num_tasks!r}")
        classes = np.unique(labels)
        if split_scheme == "disjoint":
            for t, group in enumerate(_class_groups(classes, num_tasks, "tasks")):
                train, valid = _shuffled_halves(rows[np.isin(labels, group)], seed, "task", t)
                specs.append(TaskSpec(t, f"classes {group[0]}-{group[-1]}", tuple(group.tolist()), train, valid))
        else:
            if num_tasks % 2:
                raise ConfigError(
                    f"--split_scheme halves makes two tasks per class group: --num_tasks must be even, got {num_tasks}"
                )
            for g, group in enumerate(_class_groups(classes, num_tasks // 2, "class groups (num_tasks / 2)")):
                first, second = _shuffled_halves(rows[np.isin(labels, group)], seed, "group", g)
                name = f"classes {group[0]}-{group[-1]}"
                specs.append(TaskSpec(2 * g, f"{name} (A)", tuple(group.tolist()), first, second))
                specs.append(TaskSpec(2 * g + 1, f"{name} (B)", tuple(group.tolist()), second, first))
    for spec in specs:
        if len(spec.train_rows) == 0 or len(spec.valid_rows) == 0:
            raise DataError(
                f"task {spec.index} ({spec.name}) has {len(spec.train_rows)} train and {len(spec.valid_rows)} valid "
                "images; every task needs at least one of each (2 images or more)"
            )
    return specs


def class_lists_hash(specs: list[TaskSpec]) -> str:
    """sha256 (first 16 hex digits) of the tasks' class lists: two runs with the same tasks have the same hash."""
    return hashlib.sha256(json.dumps([list(s.classes) for s in specs]).encode()).hexdigest()[:16]


def task_images(
    dataset: Dataset, spec: TaskSpec, *, image_column: str, label_column: str, image_size: int
) -> tuple[ImageTensors, ImageTensors]:
    """Decode the task's rows only (so a process decodes just its own tasks); labels remapped to 0..k-1."""
    rows = np.concatenate([spec.train_rows, spec.valid_rows])
    decoded = decode_images(dataset.select(rows), image_column, label_column, image_size)
    remap = torch.full((max(spec.classes) + 1,), -1, dtype=torch.long)
    remap[list(spec.classes)] = torch.arange(spec.num_labels)
    decoded = ImageTensors(decoded.images, remap[decoded.labels])
    n_train = len(spec.train_rows)
    return decoded.subset(range(n_train)), decoded.subset(range(n_train, len(rows)))


class InfiniteBatches:
    """Shuffle per epoch, full batches only (the authors' `drop_last=True`), forever; the state is resumable.

    A split smaller than the batch gives batches of the whole split (the authors' loader would give none).
    """

    def __init__(self, size: int, batch_size: int, generator: torch.Generator):
        self.size = size
        self.batch_size = min(batch_size, size)
        self.generator = generator
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def __next__(self) -> torch.Tensor:
        if self.position + self.batch_size > len(self.order):
            self.order = torch.randperm(self.size, generator=self.generator)
            self.position = 0
        batch = self.order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
        self.position = int(state["position"])


class TaskData:
    """A task's train/valid images with its own data-order and augmentation generators, seeded (seed, task)."""

    def __init__(
        self, spec: TaskSpec, train: ImageTensors, valid: ImageTensors, *, batch_size: int, seed: int, flip: bool = True
    ):
        self.spec = spec
        self.splits = {"train": train, "valid": valid}
        self.flip = flip
        self.batches = {
            name: InfiniteBatches(
                len(split), batch_size, torch.Generator().manual_seed(derive_seed(seed, f"{name}_order", spec.index))
            )
            for name, split in self.splits.items()
        }
        for name, split in self.splits.items():
            if len(split) < batch_size:
                logger.warning(
                    "task %d (%s): %s has %d images, fewer than the batch size %d: its batches are the whole split",
                    spec.index,
                    spec.name,
                    name,
                    len(split),
                    batch_size,
                )
        self.augment_generator = torch.Generator().manual_seed(derive_seed(seed, "augment", spec.index))

    def next_batch(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """An augmented, normalised float batch (random crop with 4 px padding, flip unless disabled) and its labels."""
        index = next(self.batches[split])
        data = self.splits[split]
        images = augment_batch(data.images[index], self.augment_generator, padding=4, flip=self.flip)
        return images, data.labels[index]

    def state_dict(self) -> dict:
        return {
            "batches": {name: b.state_dict() for name, b in self.batches.items()},
            "augment_generator": self.augment_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        for name, batches in self.batches.items():
            batches.load_state_dict(state["batches"][name])
        self.augment_generator.set_state(state["augment_generator"])
