"""Build a mixed meta-training source: some of glyphs10's script tasks beside tasks of natural-image patches.

glyphs10 is one visual domain (rendered font glyphs). This source keeps `--glyph_tasks` of its scripts and
adds tasks from another domain, photographs and micrographs, so that a φ meta-trained on it can be compared
with one meta-trained on glyphs alone. Each patch class is one photograph: its images are random square
crops (32 to 96 pixels a side, resized to 32) of that photograph in grayscale. Training crops come from the
left three quarters of the photograph and test crops from the right quarter, so no pixel is in both splits.

The photographs are the sample images that the PyPI package `scikit-image` 0.26.0 ships in `skimage/data`
(each one's licence is in the docstring of the function that loads it, in `skimage/data/_fetchers.py`: public
domain or CC0 for most). Install it without its dependencies (only the image files are read, the package is
not imported):

    pip install --no-deps scikit-image==0.26.0
    python tools/build_source_mix.py --glyphs_dir ../shared/data/glyphs10 --output_dir ../data/glyphs6_photos4

The output has glyphs10's layout and columns `image` (L, 32x32), `label` and `task` (ClassLabel both), so
`recipes/meta_train.py --dataset_dir OUTPUT_DIR --task_column task` meta-trains on it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tools/ is no package: its shared module, when loaded by path
from dataset_folder import (  # noqa: E402
    check_output_dir,
    png_bytes,
    run_build,
    split_metadata,
    write_dataset_folder,
    write_splits,
)

DISTRIBUTION = "scikit-image"
PINNED_VERSION = "0.26.0"
INSTALL_COMMAND = f"pip install --no-deps {DISTRIBUTION}=={PINNED_VERSION}"
# The photographs used, with the first 16 hex digits of their SHA-256 in scikit-image 0.26.0: other bytes are
# other images, hence another dataset. Left out: text.png (glyphs), microaneurysms.png (102 px, too small for the
# crops), phantom.png (a drawing), motorcycle_right.png (the left one's stereo twin), lfw_subset.npy (25 px).
PHOTOS = {
    "astronaut.png": "88431cd9653ccd53",
    "brick.png": "7966caf324f6ba84",
    "camera.png": "b0793d2adda0fa6a",
    "cell.png": "8d23a7fb81f7cc87",
    "chelsea.png": "596aa1e7cb875eb7",
    "clock_motion.png": "f029226b28b642e8",
    "coffee.png": "cc02f8ca188b167c",
    "coins.png": "f8d773fc9cfa6f4d",
    "color.png": "7d2df993de2b4fa2",
    "grass.png": "b6b6022426b38936",
    "gravel.png": "c48615b451bf1e60",
    "horse.png": "c7fb60789fe394c4",
    "hubble_deep_field.jpg": "3a19c5dd8a927a93",
    "ihc.png": "f8dd1aa387ddd1f4",
    "logo.png": "f2c57fe8af089f08",
    "moon.png": "78739619d11f7eb9",
    "motorcycle_left.png": "db18e9c415761740",
    "page.png": "341a6f0a61557662",
    "retina.jpg": "38a07f36f27f095e",
    "rocket.jpg": "c2dd0de7c538df8d",
}
# The six largest of glyphs10's ten scripts: with four photo tasks the source keeps glyphs10's ten tasks.
DEFAULT_GLYPH_TASKS = ("greek", "cyrillic", "katakana", "thai", "hebrew", "arabic")
DEFAULT_NUM_PHOTO_TASKS = 4
DEFAULT_TRAIN_PER_PHOTO, DEFAULT_TEST_PER_PHOTO = 400, 100
IMAGE_SIDE = 32
MIN_CROP, MAX_CROP = 32, 96
TRAIN_SHARE = 0.75  # the left part of each photograph gives the train crops, the rest the test crops


class MissingSourcePackageError(RuntimeError):
    """The package that ships the photographs is not installed."""


class SourceDataError(ValueError):
    """A photograph or the glyphs dataset is absent or not what this build expects."""


def photos_dir() -> Path:
    """`skimage/data` of the installed scikit-image, found without importing it (its dependencies are not needed)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise MissingSourcePackageError(f"scikit-image is not installed; install it with: {INSTALL_COMMAND}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_photo(folder: Path, name: str):
    """One photograph as a grayscale PIL image, its bytes checked against `PHOTOS`."""
    from PIL import Image

    path = folder / name
    if not path.is_file():
        raise SourceDataError(f"{path} is missing (scikit-image {PINNED_VERSION} ships it: {INSTALL_COMMAND})")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if digest != PHOTOS[name]:
        raise SourceDataError(f"{path} has SHA-256 {digest}…, not the {PHOTOS[name]}… of scikit-image {PINNED_VERSION}")
    image = Image.open(io.BytesIO(raw))
    if image.mode in ("RGBA", "LA", "P"):  # a transparent background becomes white, as it is displayed
        backdrop = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(backdrop, image.convert("RGBA"))
    return image.convert("L")


def photo_seed(seed: int, name: str, split: str) -> int:
    """The crop generator's seed for one photograph and split: independent of the order of the photographs."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}:{split}".encode()).digest()[:8], "little")


def crops(photo, split: str, count: int, seed: int, name: str) -> list[np.ndarray]:
    """`count` random square crops of the split's part of `photo`, each resized to 32x32 (uint8 arrays)."""
    from PIL import Image

    width, height = photo.size
    cut = int(width * TRAIN_SHARE)
    left, right = (0, cut) if split == "train" else (cut, width)
    largest = min(MAX_CROP, right - left, height)
    if largest < MIN_CROP:
        raise SourceDataError(f"{name}'s {split} part is {right - left}x{height}, smaller than a {MIN_CROP}-pixel crop")
    rng = np.random.default_rng(photo_seed(seed, name, split))
    out = []
    for _ in range(count):
        side = int(rng.integers(MIN_CROP, largest + 1))
        x = int(rng.integers(left, right - side + 1))
        y = int(rng.integers(0, height - side + 1))
        patch = photo.crop((x, y, x + side, y + side)).resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BOX)
        out.append(np.asarray(patch, dtype=np.uint8))
    return out


def photo_tasks(names: list[str], num_tasks: int, seed: int) -> list[list[str]]:
    """The photographs cut into `num_tasks` class-disjoint groups after a seeded shuffle."""
    if num_tasks < 1 or len(names) < 2 * num_tasks:
        raise SourceDataError(f"{len(names)} photographs cannot make {num_tasks} tasks of two classes or more")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    return [sorted(group.tolist()) for group in np.array_split(np.array(order), num_tasks)]


def glyph_rows(glyphs_dir: Path, tasks: list[str]):
    """glyphs10's rows of the kept scripts, per split: (PNG bytes, label name, task name) triples."""
    from datasets import Image, load_dataset

    try:
        source = load_dataset(str(glyphs_dir))
    except Exception as error:  # datasets raises several types for a folder that is not a dataset
        raise SourceDataError(f"{glyphs_dir} does not load as a dataset: {error}") from error
    out = {}
    for split in ("train", "test"):
        if split not in source or not {"image", "label", "task"} <= set(source[split].column_names):
            raise SourceDataError(f"{glyphs_dir} has no '{split}' split with image, label and task columns")
        data = source[split].cast_column("image", Image(decode=False))  # the PNG bytes as they are
        label_names = data.features["label"].names
        task_names = data.features["task"].names
        unknown = sorted(set(tasks) - set(task_names))
        if unknown:
            raise SourceDataError(f"{glyphs_dir} has no task {unknown}; its tasks are {task_names}")
        rows = []
        for image, label, task in zip(data["image"], data["label"], data["task"]):
            if task_names[task] in tasks:
                if image["bytes"] is None:  # an image stored as a path to a file: this build copies bytes only
                    raise SourceDataError(f"{glyphs_dir}: a '{split}' image has no bytes (path {image['path']!r})")
                rows.append((image["bytes"], label_names[label], task_names[task]))
        out[split] = rows
    return out


def split_columns(rows: list[tuple[bytes, str, str]], label_names: list[str], task_names: list[str]) -> dict:
    """(PNG bytes, label name, task name) rows as the columns of one split, the names as ClassLabel ids."""
    label_ids = {name: i for i, name in enumerate(label_names)}
    task_ids = {name: i for i, name in enumerate(task_names)}
    return {
        "image": [image for image, _, _ in rows],
        "label": [label_ids[label] for _, label, _ in rows],
        "task": [task_ids[task] for _, _, task in rows],
    }


def card(
    tasks: dict[str, list[str]],
    counts: dict[str, dict[str, int]],
    sizes: dict[str, int],
    files: dict[str, int],
    argv: str,
) -> str:
    """The README.md: YAML metadata read by `load_dataset`, then what the tasks are and how they were made."""
    import yaml

    labels = [label for members in tasks.values() for label in members]
    splits, configs = split_metadata(sizes, {split: sum(counts[split].values()) for split in counts}, files)
    meta = {
        "license": "other",
        "license_name": "mixed",
        "license_details": "glyphs10's rows keep their fonts' licences (see its card); the photographs keep those "
        "stated in scikit-image's skimage/data/_fetchers.py (public domain or CC0 for most).",
        "pretty_name": "glyphs and photographs (a mixed meta-training source)",
        "task_categories": ["image-classification"],
        "tags": ["meta-learning", "glyphs", "photographs"],
        "dataset_info": {
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": dict(enumerate(labels))}}},
                {"name": "task", "dtype": {"class_label": {"names": dict(enumerate(tasks))}}},
            ],
            **splits,
        },
        "configs": configs,
    }
    rows = "\n".join(
        f"| `{task}` | {len(members)} | {counts['train'][task]} | {counts['test'][task]} |"
        for task, members in tasks.items()
    )
    return f"""---
{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---

# Glyphs and photographs: a mixed meta-training source

Tasks of two visual domains in one dataset, for `recipes/meta_train.py --task_column task`: scripts of
[glyphs10](../glyphs10) (font glyphs; label names `script:letter`) and tasks whose classes are photographs
(label names `photo:<file>`). A photo class's images are random square crops of one photograph, 32 to
{MAX_CROP} pixels a side, resized to {IMAGE_SIDE}x{IMAGE_SIDE} (box filter), in grayscale (a transparent
background becomes white). Train crops come from the left {TRAIN_SHARE:.0%} of the photograph, test crops from
the rest, so the splits share no pixel. The photographs are the sample images of the PyPI package
`{DISTRIBUTION}` {PINNED_VERSION} (`skimage/data`), checked by their SHA-256.

| task | classes | train | test |
|---|---|---|---|
{rows}

Built with:

```
{INSTALL_COMMAND}
{argv}
```
"""


def build(
    glyphs_dir: Path,
    output_dir: Path,
    glyph_tasks: list[str],
    num_photo_tasks: int,
    train_per_photo: int,
    test_per_photo: int,
    seed: int,
    overwrite: bool,
) -> Path:
    """Write the dataset folder aside, then rename it into place."""
    from datasets import ClassLabel, Features, Image

    output_dir = check_output_dir(output_dir, overwrite)
    photo_folder = photos_dir()
    photos = {name: load_photo(photo_folder, name) for name in PHOTOS}
    glyphs = glyph_rows(glyphs_dir, glyph_tasks)
    files_by_stem = {name.rsplit(".", 1)[0]: name for name in PHOTOS}
    groups = photo_tasks(list(files_by_stem), num_photo_tasks, seed)

    tasks: dict[str, list[str]] = {}
    for task in glyph_tasks:
        tasks[task] = sorted({label for _, label, name in glyphs["train"] if name == task})
    for index, group in enumerate(groups):
        tasks[f"photos{index}"] = [f"photo:{stem}" for stem in group]
    rows = {split: list(glyphs[split]) for split in ("train", "test")}
    for index, group in enumerate(groups):
        for stem in group:
            for split, count in (("train", train_per_photo), ("test", test_per_photo)):
                for patch in crops(photos[files_by_stem[stem]], split, count, seed, stem):
                    rows[split].append((png_bytes(patch), f"photo:{stem}", f"photos{index}"))
    label_names = [label for members in tasks.values() for label in members]
    task_names = list(tasks)

    features = Features(
        {"image": Image(), "label": ClassLabel(names=label_names), "task": ClassLabel(names=task_names)}
    )

    def fill(folder: Path) -> None:
        columns = {split: split_columns(rows[split], label_names, task_names) for split in rows}
        sizes, files = write_splits(folder, columns, features)
        counts = {split: Counter(task for _, _, task in rows[split]) for split in rows}
        options = f" --glyph_tasks {' '.join(glyph_tasks)}" if tuple(glyph_tasks) != DEFAULT_GLYPH_TASKS else ""
        options += f" --num_photo_tasks {num_photo_tasks}" if num_photo_tasks != DEFAULT_NUM_PHOTO_TASKS else ""
        options += f" --train_per_photo {train_per_photo}" if train_per_photo != DEFAULT_TRAIN_PER_PHOTO else ""
        options += f" --test_per_photo {test_per_photo}" if test_per_photo != DEFAULT_TEST_PER_PHOTO else ""
        options += f" --seed {seed}" if seed != 0 else ""
        command = f"python tools/build_source_mix.py --glyphs_dir glyphs10 --output_dir {output_dir.name}{options}"
        (folder / "README.md").write_text(card(tasks, counts, sizes, files, command), encoding="utf-8")

    return write_dataset_folder(output_dir, overwrite, fill)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--glyphs_dir", type=Path, required=True, help="glyphs10 (Hub dataset layout)")
    parser.add_argument("--output_dir", type=Path, required=True, help="folder to create (Hub dataset layout)")
    parser.add_argument("--glyph_tasks", nargs="+", default=list(DEFAULT_GLYPH_TASKS), help="glyphs10 scripts kept")
    parser.add_argument(
        "--num_photo_tasks", type=int, default=DEFAULT_NUM_PHOTO_TASKS, help="tasks the photographs are cut into"
    )
    parser.add_argument(
        "--train_per_photo", type=int, default=DEFAULT_TRAIN_PER_PHOTO, help="train crops of each photograph"
    )
    parser.add_argument(
        "--test_per_photo", type=int, default=DEFAULT_TEST_PER_PHOTO, help="test crops of each photograph"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the crops and of the photo tasks")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output_dir")
    args = parser.parse_args(argv)
    if min(args.train_per_photo, args.test_per_photo) < 1:
        parser.error("--train_per_photo and --test_per_photo must be at least 1")
    if len(set(args.glyph_tasks)) != len(args.glyph_tasks):
        parser.error("--glyph_tasks names a script twice")
    return run_build(
        lambda: build(
            args.glyphs_dir,
            args.output_dir,
            args.glyph_tasks,
            args.num_photo_tasks,
            args.train_per_photo,
            args.test_per_photo,
            args.seed,
            args.overwrite,
        ),
        (MissingSourcePackageError, SourceDataError),
    )


if __name__ == "__main__":
    sys.exit(main())
