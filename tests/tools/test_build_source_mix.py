"""tools/build_source_mix.py: glyph tasks and photo tasks in one dataset that loads offline; typed errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from _builders import load_script
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, load_dataset
from PIL import Image as PILImage

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "build_source_mix.py"
SCRIPTS = ["greek", "thai", "hangul"]


@pytest.fixture(scope="module")
def tool():
    # tools/ is not a package: load the script by path so its functions and error types can be used directly
    return load_script(SCRIPT, "build_source_mix")


@pytest.fixture
def glyphs(tmp_path) -> Path:
    """A glyphs10-shaped folder: three scripts of two letters each, train and test splits."""
    labels = [f"{script}:{letter}" for script in SCRIPTS for letter in "ab"]
    features = Features({"image": Image(), "label": ClassLabel(names=labels), "task": ClassLabel(names=SCRIPTS)})
    rng = np.random.default_rng(0)

    def split(per_class: int) -> Dataset:
        rows = [(label, label // 2) for label in range(len(labels)) for _ in range(per_class)]
        images = [PILImage.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)) for _ in rows]
        return Dataset.from_dict(
            {"image": images, "label": [r[0] for r in rows], "task": [r[1] for r in rows]}, features=features
        )

    folder = tmp_path / "glyphs"
    for name, data in DatasetDict(train=split(3), test=split(2)).items():
        data.to_parquet(str(folder / "data" / f"{name}-00000-of-00001.parquet"))
    return folder


@pytest.fixture
def photos(tool, tmp_path, monkeypatch) -> Path:
    """Stand-ins for scikit-image's photographs: each pixel's value is its column, so a crop tells where it was cut."""
    folder = tmp_path / "skimage" / "data"
    folder.mkdir(parents=True)
    columns = np.tile(np.arange(200, dtype=np.uint8), (120, 1))
    hashes = {}
    for name in list(tool.PHOTOS)[:6]:
        path = folder / name
        PILImage.fromarray(columns).convert("RGB").save(path, format="PNG")  # lossless, whatever the name
        hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    monkeypatch.setattr(tool, "PHOTOS", hashes)
    monkeypatch.setattr(tool, "photos_dir", lambda: folder)
    return folder


def _build(tool, glyphs, out, *extra) -> int:
    args = ["--glyphs_dir", str(glyphs), "--output_dir", str(out), "--glyph_tasks", "greek", "hangul"]
    return tool.main([*args, "--num_photo_tasks", "2", "--train_per_photo", "5", "--test_per_photo", "3", *extra])


def test_mixed_source_loads_offline_with_disjoint_crops(tool, glyphs, photos, tmp_path):
    out = tmp_path / "mix"
    assert _build(tool, glyphs, out) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"
    ds = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    features = ds["train"].features
    assert features["task"].names == ["greek", "hangul", "photos0", "photos1"]
    assert features["label"].names[:4] == ["greek:a", "greek:b", "hangul:a", "hangul:b"]
    assert all(name.startswith("photo:") for name in features["label"].names[4:])
    assert ds.num_rows == {"train": 4 * 3 + 6 * 5, "test": 4 * 2 + 6 * 3}
    assert "thai" not in {features["task"].names[t] for t in ds["train"]["task"]}

    cut = int(200 * tool.TRAIN_SHARE)
    for split, in_part in (("train", lambda v: v.max() < cut), ("test", lambda v: v.min() >= cut)):
        rows = [row for row in ds[split] if features["task"].names[row["task"]].startswith("photos")]
        assert {row["image"].size for row in rows} == {(32, 32)}
        assert all(in_part(np.asarray(row["image"])) for row in rows), f"a {split} crop left its part of the photo"
        by_task = {}
        for row in rows:  # a photo's class belongs to one task, and each task has three classes
            by_task.setdefault(row["task"], set()).add(row["label"])
        assert sorted(len(classes) for classes in by_task.values()) == [3, 3]


def test_same_seed_same_crops_other_seed_other_crops(tool, glyphs, photos, tmp_path):
    def pixels(out, *extra):
        assert _build(tool, glyphs, out, *extra) == 0
        train = load_dataset(str(out), cache_dir=str(tmp_path / "cache" / out.name))["train"]
        return [np.asarray(row["image"]).tobytes() for row in train]

    first, again, other = pixels(tmp_path / "a"), pixels(tmp_path / "b"), pixels(tmp_path / "c", "--seed", "1")
    assert first == again
    assert first != other


def test_bad_inputs_are_typed_errors(tool, glyphs, photos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "mix"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert _build(tool, glyphs, out) == 2
    assert "OutputDirError" in capsys.readouterr().err and (out / "keep.txt").exists()

    with pytest.raises(tool.SourceDataError, match="no task"):
        tool.glyph_rows(glyphs, ["greek", "runic"])
    with pytest.raises(tool.SourceDataError, match="does not load"):
        tool.glyph_rows(tmp_path / "nowhere", ["greek"])
    by_path = tmp_path / "by_path"  # a dataset whose image cells name files instead of holding their bytes
    PILImage.new("L", (32, 32)).save(tmp_path / "a.png")
    features = Features({"image": Image(), "label": ClassLabel(names=["greek:a"]), "task": ClassLabel(names=["greek"])})
    for split in ("train", "test"):
        Dataset.from_dict(
            {"image": [{"bytes": None, "path": str(tmp_path / "a.png")}], "label": [0], "task": [0]}, features=features
        ).to_parquet(str(by_path / "data" / f"{split}-00000-of-00001.parquet"))
    with pytest.raises(tool.SourceDataError, match="has no bytes"):
        tool.glyph_rows(by_path, ["greek"])
    with pytest.raises(tool.SourceDataError, match="cannot make"):
        tool.photo_tasks(["a", "b", "c"], 2, seed=0)

    name = next(iter(tool.PHOTOS))
    (photos / name).write_bytes((photos / name).read_bytes() + b"\0")
    with pytest.raises(tool.SourceDataError, match="SHA-256"):
        tool.load_photo(photos, name)
    (photos / name).unlink()
    with pytest.raises(tool.SourceDataError, match="missing"):
        tool.load_photo(photos, name)

    monkeypatch.undo()  # `photos` replaced photos_dir: check the real lookup, with no package found
    monkeypatch.setattr(tool.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(tool.MissingSourcePackageError, match="pip install --no-deps scikit-image"):
        tool.photos_dir()


def test_a_photo_too_small_for_a_crop_is_an_error(tool):
    tiny = PILImage.new("L", (40, 40))
    with pytest.raises(tool.SourceDataError, match="smaller than"):
        tool.crops(tiny, "test", 1, seed=0, name="tiny")
