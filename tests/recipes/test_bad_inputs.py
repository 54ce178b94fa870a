"""Bad data and flags of both recipes are a typed error naming the problem, never a silent result."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _builders import load_script
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage

from mp_hub.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
TINY_VIT = [
    "--model_type", "vit", "--model_config_overrides",
    '{"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "patch_size": 8}',
]  # fmt: skip


def _load(name: str):
    return load_script(ROOT / "recipes" / f"{name}.py", f"{name}_recipe_bad_inputs")


transfer, meta_train = _load("transfer"), _load("meta_train")


def _dataset(root: Path, splits: dict[str, list[int]], class_label: bool = True) -> Path:
    """A Hub-layout folder with one parquet file per split of 8×8 images with the given labels."""
    rng = np.random.default_rng(0)
    label = ClassLabel(names=[f"c{i}" for i in range(4)]) if class_label else Value("int64")
    features = Features({"image": Image(), "label": label, "task": Value("int64")})
    (root / "data").mkdir(parents=True)
    for split, labels in splits.items():
        images = [PILImage.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in labels]
        tasks = [max(v, 0) // 2 for v in labels]
        data = Dataset.from_dict({"image": images, "label": labels, "task": tasks}, features=features)
        data.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


LABELLED = [0, 1, 2, 3] * 4


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--num_train_epochs", "0"], "--num_train_epochs must be a finite number > 0, got 0.0"),
        (["--num_train_epochs", "-1"], "--num_train_epochs must be a finite number > 0"),
        (["--image_size", "0"], "--image_size must be >= 1, got 0"),
        (["--checkpointing_steps", "0"], "--checkpointing_steps must be a positive integer"),
        (["--checkpointing_steps", "-1"], "--checkpointing_steps must be a positive integer"),
        (["--num_warmup_steps", "-1"], "--num_warmup_steps must be >= 0, got -1"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number > 0, got nan"),
        (["--learning_rate", "inf"], "--learning_rate must be a finite number > 0, got inf"),
        (["--learning_rate", "0"], "--learning_rate must be a finite number > 0"),
        (["--weight_decay", "-0.1"], "--weight_decay must be a finite number >= 0"),
        (["--model_config_overrides", '{"depht": 8}'], r"\['depht'\] are not fields of the 'cifar_resnet' config"),
        ([*TINY_VIT[:2], "--model_config_overrides", '{"hiden_size": 8}'], r"\['hiden_size'\] are not fields"),
        (["--model_name_or_path", "x", "--model_config_overrides", '{"depth": 8}'], "goes with --model_type"),
    ],
)
def test_transfer_refuses_a_bad_flag_at_parse_time(flags, match):
    with pytest.raises(ConfigError, match=match):
        transfer.parse_args(flags)


def test_transfer_refuses_an_image_size_the_model_cannot_take_before_training(tmp_path):
    args = transfer.parse_args(
        [*TINY_VIT, "--image_size", "4", "--regularizer", "none", "--max_train_samples", "8",
         "--max_eval_samples", "8", "--output_dir", str(tmp_path / "out")]
    )  # fmt: skip
    with pytest.raises(ConfigError, match="--image_size: image size 4 does not fit ViTForImageClassification"):
        transfer.run(args)
    assert not (tmp_path / "out" / "all_results.json").exists()


@pytest.mark.parametrize("class_label", [True, False], ids=["ClassLabel", "int64"])
def test_transfer_refuses_unlabelled_test_images(tmp_path, class_label):
    data = _dataset(tmp_path / "data", {"train": LABELLED, "test": [-1] * 8}, class_label)
    args = transfer.parse_args(
        ["--dataset_dir", str(data), "--regularizer", "none", "--output_dir", str(tmp_path / "out")]
    )
    with pytest.raises(DataError, match="'test' split has 8 of 8 images with a negative label"):
        transfer.run(args)


def test_transfer_refuses_an_empty_train_split(tmp_path):
    data = _dataset(tmp_path / "data", {"train": [], "test": LABELLED})
    args = transfer.parse_args(
        ["--dataset_dir", str(data), "--regularizer", "none", "--output_dir", str(tmp_path / "out")]
    )
    with pytest.raises(DataError, match=r"a split is empty \(Instruction \"train\" corresponds to no data"):
        transfer.run(args)


def _meta_train_args(data: Path, tmp_path: Path, *flags: str) -> list[str]:
    return ["--dataset_dir", str(data), "--num_tasks", "2", "--image_size", "8", "--per_device_train_batch_size",
            "4", "--max_train_steps", "1", "--cache_dir", str(tmp_path / "cache"), "--output_dir",
            str(tmp_path / "out"), *flags]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        (["--checkpointing_steps", "0"], "--checkpointing_steps must be >= 1, got 0"),
        (["--checkpointing_steps", "-1"], "--checkpointing_steps must be >= 1, got -1"),
        (["--checkpoints_total_limit", "0"], "--checkpoints_total_limit must be >= 1, got 0"),
        (["--num_tasks", "0"], "--num_tasks must be >= 1, got 0"),
        (["--learning_rate", "nan"], "--learning_rate must be a finite number > 0, got nan"),
        (["--weight_decay", "inf"], "--weight_decay must be a finite number >= 0, got inf"),
    ],
)
def test_meta_train_refuses_a_bad_flag_at_parse_time(tmp_path, flags, match):
    with pytest.raises(ConfigError, match=match):
        meta_train.parse_args(_meta_train_args(tmp_path / "data", tmp_path, *flags))


@pytest.mark.parametrize(
    ("labels", "match"),
    [([], "a split is empty"), ([*LABELLED, -1, -1], "'train' split has 2 of 18 images with a negative")],
    ids=["empty", "unlabelled"],
)
def test_meta_train_refuses_an_empty_or_unlabelled_train_split(tmp_path, labels, match):
    data = _dataset(tmp_path / "data", {"train": labels})
    with pytest.raises(DataError, match=match):
        meta_train.main(_meta_train_args(data, tmp_path))


def test_meta_train_prints_a_typed_error_as_one_line_and_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "meta_train.py"), "--dataset_dir", str(tmp_path), "--output_dir", ""],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "meta_train.py: error (ConfigError): --output_dir is required"
    assert "Traceback" not in proc.stderr


def test_check_labels_refuses_a_split_emptied_by_selection():
    from mp_hub.data import check_labels

    with pytest.raises(DataError, match="the 'validation' split is empty"):
        check_labels(Dataset.from_dict({"label": [0, 1]}).select([]), "label", "validation")
