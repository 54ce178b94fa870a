"""mp_hub.data: the shipped dataset, the chosen and decoded splits (in memory or on demand), step-indexed
batches and their DataLoader, calibration batches, meta-training tasks."""

import copy

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Image, load_dataset
from PIL import Image as PILImage

from mp_hub.data import (
    ClassificationData,
    EvalImages,
    ImageTensors,
    LazyImages,
    Splits,
    TrainBatches,
    calibration_batches,
    decode_splits,
    label_map,
    lazy_splits,
    load_splits,
    train_loader,
)
from mp_hub.data.tasks import InfiniteBatches, class_lists_hash, recorded_split, recorded_task_column, split_tasks
from mp_hub.datasets import FASHION_MNIST_TINY
from mp_hub.errors import ConfigError, DataError
from mp_hub.zoo import DEFAULT_PHI

# --- the shipped dataset -------------------------------------------------------------------------------------------


def test_fashion_mnist_tiny_loads_offline_balanced():
    ds = load_dataset(str(FASHION_MNIST_TINY))
    assert {k: len(v) for k, v in ds.items()} == {"train": 1000, "test": 1000}
    assert isinstance(ds["train"].features["image"], Image)
    assert isinstance(ds["train"].features["label"], ClassLabel) and ds["train"].features["label"].num_classes == 10
    for split in ds.values():
        assert torch.bincount(torch.as_tensor(split["label"])).tolist() == [100] * 10
    size = sum(p.stat().st_size for p in (FASHION_MNIST_TINY / "data").glob("*.parquet"))
    assert size < 3_000_000
    card = (FASHION_MNIST_TINY / "README.md").read_text()
    assert "license: mit" in card and "Zalando" in card and "zalandoresearch/fashion-mnist" in card
    assert DEFAULT_PHI == "metaperturb-glyphs10-resnet20"


# --- splits --------------------------------------------------------------------------------------------------------


def test_load_splits_picks_subsets_and_decodes(tmp_path):
    splits = load_splits(dataset_dir=str(FASHION_MNIST_TINY), max_eval_samples=30, samples_per_class=3, seed=1)
    assert (splits.eval_split, len(splits.train), len(splits.eval), len(splits.labels)) == ("test", 30, 30, 10)
    assert splits.dataset_id == str(FASHION_MNIST_TINY) and splits.remap is None
    again = load_splits(dataset_dir=str(FASHION_MNIST_TINY), max_eval_samples=30, samples_per_class=3, seed=1)
    assert splits.train["label"] == again.train["label"]  # seeded
    data = decode_splits(splits, 8, mean=(0.4, 0.4, 0.4), std=(0.3, 0.3, 0.3))
    assert isinstance(data, ClassificationData) and data.train.images.shape == (30, 3, 8, 8)
    assert data.train.images.dtype == torch.uint8 and data.mean == (0.4, 0.4, 0.4)
    with pytest.raises(DataError, match="no label column 'fine'"):
        load_splits(dataset_dir=str(FASHION_MNIST_TINY), label_column="fine")


def test_label_map_makes_plain_integer_labels_contiguous():
    image = PILImage.fromarray(np.zeros((4, 4, 3), np.uint8))
    train = Dataset.from_dict({"image": [image] * 3, "label": [3, 7, 3]}).cast_column("image", Image())
    evaluation = Dataset.from_dict({"image": [image], "label": [5]}).cast_column("image", Image())
    assert label_map(train, evaluation, "label") == (["3", "5", "7"], {3: 0, 5: 1, 7: 2})
    train = train.cast_column("label", ClassLabel(names=[str(i) for i in range(8)]))
    assert label_map(train, evaluation, "label") == ([str(i) for i in range(8)], None)


def test_lazy_splits_decode_on_demand_exactly_what_decode_splits_holds(tmp_path):
    image = [PILImage.fromarray(np.full((5, 7, 3), v, np.uint8)) for v in (10, 60, 110, 160, 210, 250)]
    gray = [PILImage.fromarray(np.arange(42, dtype=np.uint8).reshape(6, 7) * v) for v in (1, 2, 3, 4, 5, 6)]
    train = Dataset.from_dict({"image": image + gray, "label": [3, 7] * 6}).cast_column("image", Image())
    evaluation = Dataset.from_dict({"image": gray[:4], "label": [5, 3, 7, 5]}).cast_column("image", Image())
    names, remap = label_map(train, evaluation, "label")
    splits = Splits(train, evaluation, names, remap, "test", "x")
    eager, lazy = decode_splits(splits, 8), lazy_splits(splits, 8)
    assert isinstance(lazy.train, LazyImages) and (len(lazy.train), len(lazy.eval)) == (12, 4)
    assert torch.equal(lazy.eval.labels, torch.tensor([1, 0, 2, 1]))  # mapped to 0..K-1 as decode_splits does
    for index in ([0, 11, 5], [3], list(range(12))):
        a, b = eager.train.subset(index), lazy.train.subset(index)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    loaders = [torch.utils.data.DataLoader(EvalImages(d), batch_size=3) for d in (eager, lazy)]
    for (xa, ya), (xb, yb) in zip(*loaders, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert EvalImages(lazy)[2][0].shape == (3, 8, 8)
    # a grayscale image is resized before it becomes RGB (a third of the work): the same bytes as the other way
    as_rgb = Dataset.from_dict({"image": [g.convert("RGB") for g in gray], "label": [0] * 6})
    as_rgb = LazyImages(as_rgb.cast_column("image", Image()), "image", "label", 8).subset(range(6))
    assert torch.equal(lazy.train.subset(range(6, 12)).images, as_rgb.images)


# --- batches -------------------------------------------------------------------------------------------------------


def _tiny_data() -> ClassificationData:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (20, 3, 8, 8), dtype=torch.uint8, generator=gen)
    return ClassificationData(ImageTensors(images, torch.arange(20)), ImageTensors(images, torch.arange(20)),
                              [str(i) for i in range(20)], "test", "x", 8)  # fmt: skip


def test_train_batches_are_a_function_of_the_step():
    data = _tiny_data()
    one = TrainBatches(data, 4, seed=0, rank=0, world_size=2)
    other = TrainBatches(data, 4, seed=0, rank=1, world_size=2)
    assert one.steps_per_epoch == 2
    x5, y5 = one(5)
    one(0)  # visiting another epoch first changes nothing
    assert all(torch.equal(a, b) for a, b in zip(one(5), (x5, y5)))
    seen = torch.cat([b(s)[1] for s in (0, 1) for b in (one, other)])
    assert sorted(seen.tolist()) == sorted(set(seen.tolist())) and len(seen) == 16  # no image twice in an epoch
    assert not torch.equal(one(0)[1], one(2)[1])  # each epoch reshuffles


def test_the_train_loader_gives_each_steps_batch_whatever_its_workers():
    data = _tiny_data()
    batches = TrainBatches(data, 4, seed=0, rank=1, world_size=2)
    expected = [batches(step) for step in range(3, 9)]
    for workers in (0, 2):
        got = list(train_loader(batches, 3, 9, num_workers=workers))
        assert len(got) == 6
        assert all(torch.equal(x, ex) and torch.equal(y, ey) for (x, y), (ex, ey) in zip(got, expected))
    rng = torch.get_rng_state()
    list(train_loader(batches, 0, 2, num_workers=2))
    assert torch.equal(rng, torch.get_rng_state())  # the workers' seeds are not drawn from torch's global RNG
    with pytest.raises(ConfigError, match="num_workers"):
        train_loader(batches, 0, 2, num_workers=-1)


def test_calibration_batches_cover_the_training_images_once_in_a_seeded_order():
    data = _tiny_data()
    batches = list(calibration_batches(data, 8, seed=3))
    assert [len(b) for b in batches] == [8, 8, 4]
    again = torch.cat(list(calibration_batches(data, 8, seed=3)))
    assert torch.equal(torch.cat(batches), again) and again.abs().max() <= 1.0


# --- meta-training tasks (tasks.py) --------------------------------------------------------------------------------


def test_disjoint_split_is_deterministic_class_disjoint_and_covers_the_data():
    labels = np.repeat(np.arange(10), 6)
    specs = split_tasks(labels, seed=3, num_tasks=3, split_scheme="disjoint")
    again = split_tasks(labels, seed=3, num_tasks=3, split_scheme="disjoint")
    assert [s.classes for s in specs] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    for a, b in zip(specs, again):
        assert np.array_equal(a.train_rows, b.train_rows) and np.array_equal(a.valid_rows, b.valid_rows)
    rows = np.concatenate([np.concatenate([s.train_rows, s.valid_rows]) for s in specs])
    assert sorted(rows.tolist()) == list(range(len(labels)))  # every image in exactly one task and one half
    for s in specs:
        assert set(labels[s.train_rows]) <= set(s.classes) and set(labels[s.valid_rows]) <= set(s.classes)
    other = split_tasks(labels, seed=4, num_tasks=3, split_scheme="disjoint")
    assert not np.array_equal(other[0].train_rows, specs[0].train_rows)
    assert class_lists_hash(other) == class_lists_hash(specs)  # the classes do not depend on the seed


def test_halves_split_swaps_train_and_valid_within_each_group():
    labels = np.repeat(np.arange(8), 5)
    specs = split_tasks(labels, seed=0, num_tasks=4, split_scheme="halves")
    again = split_tasks(labels, seed=0, num_tasks=4, split_scheme="halves")
    assert all(np.array_equal(a.train_rows, b.train_rows) for a, b in zip(specs, again))
    assert [s.index for s in specs] == [0, 1, 2, 3]
    assert specs[0].classes == specs[1].classes == (0, 1, 2, 3) and specs[2].classes == (4, 5, 6, 7)
    for a, b in (specs[0:2], specs[2:4]):
        assert np.array_equal(a.train_rows, b.valid_rows) and np.array_equal(a.valid_rows, b.train_rows)
        assert len(a.train_rows) == 10 and not set(a.train_rows) & set(a.valid_rows)
    assert not set(specs[0].classes) & set(specs[2].classes)


def test_task_column_split():
    labels = np.repeat(np.arange(6), 4)
    task_ids = labels // 3
    specs = split_tasks(labels, seed=0, task_ids=task_ids, task_names=["greek", "thai"])
    assert [(s.name, s.classes) for s in specs] == [("greek", (0, 1, 2)), ("thai", (3, 4, 5))]
    assert all(len(s.train_rows) == 6 and len(s.valid_rows) == 6 for s in specs)
    with pytest.raises(ConfigError, match="disagrees"):
        split_tasks(labels, seed=0, task_ids=task_ids, num_tasks=3)


def test_a_recorded_split_reads_back_its_task_column():
    assert recorded_split("halves", "task") == "task_column:task" and recorded_task_column("task_column:task") == "task"
    assert recorded_split("disjoint", None) == "disjoint" and recorded_task_column("disjoint") is None


def test_split_errors():
    with pytest.raises(DataError, match="3 classes, fewer than the 4 tasks"):
        split_tasks(np.repeat(np.arange(3), 4), seed=0, num_tasks=4, split_scheme="disjoint")
    with pytest.raises(ConfigError, match="even"):
        split_tasks(np.repeat(np.arange(6), 4), seed=0, num_tasks=3, split_scheme="halves")
    with pytest.raises(DataError, match="task 1 .* 0 train and 1 valid"):
        split_tasks(np.array([0, 0, 1]), seed=0, task_ids=np.array([0, 0, 1]))


def test_batches_shuffle_per_epoch_and_resume():
    batches = InfiniteBatches(10, 4, torch.Generator().manual_seed(0))
    first_epoch = torch.cat([next(batches), next(batches)])
    assert len(set(first_epoch.tolist())) == 8  # full batches only; the last 2 of the epoch are dropped
    state = copy.deepcopy(batches.state_dict())
    ahead = [next(batches) for _ in range(5)]
    batches.load_state_dict(state)
    assert all(torch.equal(a, next(batches)) for a in ahead)
