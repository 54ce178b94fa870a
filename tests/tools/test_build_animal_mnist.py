"""tools/build_animal_mnist.py: a small build loads offline with its features; typed errors otherwise."""

from __future__ import annotations

import gzip
import io
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from _builders import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "build_animal_mnist.py"


@pytest.fixture(scope="module")
def tool():
    # tools/ is not a package: load the script by path so its functions and error types can be used directly
    return load_script(SCRIPT, "build_animal_mnist")


def _require_source(tool) -> None:
    try:
        tool.source_files()
    except tool.MissingSourcePackageError as error:
        pytest.skip(f"{error} (the build test needs it)")


def test_small_build_loads_offline(tool, tmp_path):
    _require_source(tool)
    from datasets import ClassLabel, Image, load_dataset

    out = tmp_path / "animal_mnist"
    args = ["--output_dir", str(out), "--test_per_class", "6", "--max_per_class", "8", "--seed", "3"]
    assert tool.main(args) == 0
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"

    ds = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(ds) == {"train", "test"}
    assert ds.num_rows == {"train": 80, "test": 60}
    features = ds["train"].features
    assert isinstance(features["image"], Image)
    assert isinstance(features["label"], ClassLabel) and features["label"].names == tool.CLASS_NAMES

    pixels = {}
    for split in ("train", "test"):
        labels = np.array(ds[split]["label"])
        assert np.bincount(labels, minlength=10).tolist() == [8 if split == "train" else 6] * 10
        images = [ds[split][i]["image"] for i in range(ds.num_rows[split])]
        assert {(im.size, im.mode) for im in images} == {((28, 28), "L")}
        pixels[split] = {np.asarray(im).tobytes() for im in images}
    assert not pixels["train"] & pixels["test"], "an image is in both splits"

    card = (out / "README.md").read_text(encoding="utf-8")
    assert "animal-mnist` version 0.4" in card and "MIT" in card and "--seed 3" in card


def test_split_is_seeded_and_capped_train_is_a_prefix(tool):
    labels = np.repeat(np.arange(10), 30)
    rows = np.arange(300)
    full = tool.split_rows(labels, rows, 5, None, seed=0)
    again = tool.split_rows(labels, rows, 5, None, seed=0)
    capped = tool.split_rows(labels, rows, 5, 4, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(full, again))
    assert np.array_equal(capped[1], full[1])  # the test split does not depend on the cap
    assert set(capped[0]) <= set(full[0]) and len(capped[0]) == 40
    assert not set(full[0]) & set(full[1]) and len(full[0]) + len(full[1]) == 300
    with pytest.raises(tool.SourceDataError, match="not more than --test_per_class 30"):
        tool.split_rows(labels, rows, 30, None, seed=0)


def test_duplicates_are_dropped_and_conflicting_ones_refused(tool):
    images = np.zeros((4, 2, 2), np.uint8)
    images[1, 0, 0] = images[3, 0, 0] = 1
    assert tool.unique_rows(images, np.array([0, 1, 0, 1])).tolist() == [0, 1]
    with pytest.raises(tool.SourceDataError, match="identical but labelled differently"):
        tool.unique_rows(images, np.array([0, 1, 2, 1]))


def test_missing_package_names_the_install_command(tool, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "animal_mnist", None)  # makes `import animal_mnist` raise ImportError
    with pytest.raises(tool.MissingSourcePackageError, match=r"pip install --no-deps animal-mnist==0\.4"):
        tool.source_files()
    assert tool.main(["--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MissingSourcePackageError:") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_non_empty_output_dir_is_refused_without_overwrite(tool, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert tool.main(["--output_dir", str(out)]) == 2
    assert "OutputDirError" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_the_folder(tool, tmp_path):
    _require_source(tool)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert tool.main(["--output_dir", str(out), "--overwrite", "--test_per_class", "1", "--max_per_class", "1"]) == 0
    assert not (out / "stale.txt").exists() and (out / "README.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_pickle_naming_other_code_is_refused(tool, tmp_path):
    bad = tmp_path / tool.LABELS_FILE
    bad.write_bytes(gzip.compress(pickle.dumps(Path("x"))))
    with pytest.raises(tool.SourceDataError, match="SHA-256"):
        tool._load_array(bad)
    unpickler = tool._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Path("x"))))
    with pytest.raises(tool.SourceDataError, match="not a NumPy array part"):
        unpickler.load()
