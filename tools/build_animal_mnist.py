"""Build Animal-MNIST (28x28 animal silhouettes, 10 classes) as a Hugging Face Hub dataset folder, offline.

The images come from the PyPI package `animal-mnist` 0.4 (MIT), whose wheel ships them as two gzipped
pickles of NumPy arrays. Install it without its declared dependencies (TensorFlow, pandas, scikit-learn:
only its benchmark helpers use them, this script reads the data files alone):

    pip install --no-deps animal-mnist==0.4
    python tools/build_animal_mnist.py --output_dir ../data/animal_mnist

The output has the layout of ../shared/data/fashion_mnist: a README.md card whose YAML `dataset_info` gives
the features (`image`: Image, `label`: ClassLabel with the 10 names) and the splits, and
`data/{train,test}-00000-of-00001.parquet`, so `datasets.load_dataset(OUTPUT_DIR)` loads it offline.

The source has no split. The rule: exact duplicate images are dropped (the first occurrence is kept; the
284 duplicated pairs never disagree on the label), then per class, in label order, one NumPy generator
seeded with `--seed` permutes that class's images; the first `--test_per_class` go to `test`, the rest
(at most `--max_per_class`) to `train`. Rows keep the source order within each split.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import pickle
import sys
from importlib import metadata, resources
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

PACKAGE = "animal_mnist"  # the import name
DISTRIBUTION = "animal-mnist"  # the PyPI name
PINNED_VERSION = "0.4"
INSTALL_COMMAND = f"pip install --no-deps {DISTRIBUTION}=={PINNED_VERSION}"
DATA_FOLDER = ("data", "Animal_MNIST")
IMAGES_FILE = "animal_data_version_3.gz"
LABELS_FILE = "animal_label_version_3.gz"
# The files of animal-mnist 0.4 (also byte-identical in animal-shape-mnist 0.39): another content is another dataset.
SHA256 = {
    IMAGES_FILE: "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce",
    LABELS_FILE: "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57",
}
CLASS_NAMES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
SOURCE_SIZE = 10_000
IMAGE_SIDE = 28
DEFAULT_TEST_PER_CLASS = 200  # benchmarks/transfer_gain.py draws 200 test images per class from each target


class MissingSourcePackageError(RuntimeError):
    """The package that ships the images is not installed."""


class SourceDataError(ValueError):
    """The package's data files are absent or are not the expected arrays."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain NumPy arrays and nothing else: a pickle can run any code, so only these names load."""

    def find_class(self, module: str, name: str):
        if (module, name) in {("numpy", "ndarray"), ("numpy", "dtype")}:
            return getattr(np, name)
        if module in {"numpy.core.multiarray", "numpy._core.multiarray"} and name == "_reconstruct":
            try:  # NumPy 2 moved it; the pickles name the NumPy 1 module
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # pragma: no cover - NumPy 1
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        raise SourceDataError(f"the data pickle refers to {module}.{name}, which is not a NumPy array part")


def source_files() -> tuple[Path, Path, str]:
    """Paths of the images and labels files inside the installed package, and the package version."""
    try:
        import animal_mnist  # noqa: F401  (its __init__ is empty: TensorFlow is only imported by its other modules)
    except ImportError as error:
        raise MissingSourcePackageError(
            f"the Python package '{PACKAGE}' is not installed; install it with: {INSTALL_COMMAND}"
        ) from error
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown"
    folder = resources.files(PACKAGE).joinpath(*DATA_FOLDER)
    paths = []
    for name in (IMAGES_FILE, LABELS_FILE):
        path = Path(str(folder.joinpath(name)))
        if not path.is_file():
            raise SourceDataError(f"{path} is missing from the installed '{PACKAGE}' package ({version})")
        paths.append(path)
    return paths[0], paths[1], version


def _load_array(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256[path.name]:
        raise SourceDataError(f"{path} has SHA-256 {digest}, not the {SHA256[path.name]} of {DISTRIBUTION} 0.4")
    try:
        array = _NumpyOnlyUnpickler(io.BytesIO(gzip.decompress(raw))).load()
    except (OSError, EOFError, pickle.UnpicklingError) as error:
        raise SourceDataError(f"{path} is not a gzipped pickle: {error}") from error
    if not isinstance(array, np.ndarray):
        raise SourceDataError(f"{path} holds a {type(array).__name__}, not a NumPy array")
    return array


def load_source(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 uint8 images (N, 28, 28) and their int64 labels, checked."""
    images, labels = _load_array(images_path), _load_array(labels_path)
    if images.shape != (SOURCE_SIZE, IMAGE_SIDE, IMAGE_SIDE) or images.dtype != np.uint8:
        raise SourceDataError(f"{images_path} holds {images.dtype} {images.shape}, not uint8 (10000, 28, 28)")
    if labels.shape != (SOURCE_SIZE,) or not np.issubdtype(labels.dtype, np.integer):
        raise SourceDataError(f"{labels_path} holds {labels.dtype} {labels.shape}, not integers (10000,)")
    if labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise SourceDataError(f"{labels_path} has labels outside 0..{len(CLASS_NAMES) - 1}")
    return images, labels.astype(np.int64)


def unique_rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct image; a duplicate with another label is an error."""
    first: dict[bytes, int] = {}
    for index, image in enumerate(images):
        key = image.tobytes()
        if key in first:
            if labels[first[key]] != labels[index]:
                raise SourceDataError(f"images {first[key]} and {index} are identical but labelled differently")
            continue
        first[key] = index
    return np.fromiter(first.values(), dtype=np.int64)


def split_rows(
    labels: np.ndarray, rows: np.ndarray, test_per_class: int, max_per_class: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of `rows`: `test_per_class` test rows per class, the rest (capped) for train."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in range(len(CLASS_NAMES)):
        members = rows[labels[rows] == label]
        if len(members) <= test_per_class:
            raise SourceDataError(
                f"class {CLASS_NAMES[label]!r} has {len(members)} distinct images, not more than "
                f"--test_per_class {test_per_class}"
            )
        order = members[rng.permutation(len(members))]
        test.append(order[:test_per_class])
        rest = order[test_per_class:]
        train.append(rest if max_per_class is None else rest[:max_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _features():
    from datasets import ClassLabel, Features, Image

    return Features({"image": Image(), "label": ClassLabel(names=CLASS_NAMES)})


def card(
    version: str,
    duplicates: int,
    counts: dict[str, np.ndarray],
    sizes: dict[str, int],
    files: dict[str, int],
    argv: str,
) -> str:
    """The README.md: YAML metadata read by `load_dataset`, then the provenance and the split rule."""
    import yaml

    names = {str(i): name for i, name in enumerate(CLASS_NAMES)}
    splits, configs = split_metadata(sizes, {split: int(counts[split].sum()) for split in counts}, files)
    meta = {
        "license": "mit",
        "pretty_name": "Animal-MNIST (animal silhouettes)",
        "task_categories": ["image-classification"],
        "size_categories": ["1K<n<10K"],
        "tags": ["animals", "silhouettes", "mnist-like"],
        "dataset_info": {
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": names}}},
            ],
            **splits,
        },
        "configs": configs,
    }
    rows = "\n".join(
        f"| {i} | `{name}` | {counts['train'][i]} | {counts['test'][i]} |" for i, name in enumerate(CLASS_NAMES)
    )
    n_train, n_test = int(counts["train"].sum()), int(counts["test"].sum())
    return f"""---
{yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)}---

# Animal-MNIST

Grayscale 28x28 silhouettes of animals in 10 classes: a white animal shape on black (0 = background), in
the format of MNIST. The images were taken from the PyPI package **`{DISTRIBUTION}` version {version}**,
whose wheel ships them in `animal_mnist/data/Animal_MNIST/` as two gzipped pickles of NumPy arrays
(`{IMAGES_FILE}`: 10,000 uint8 images; `{LABELS_FILE}`: their labels).

* **Creator:** Sina Mohammadi (SinaSR-6), the package's author. The package does not say where the
  silhouettes were drawn from.
* **Licence:** MIT, copyright 2025 SinaSR-6, as stated in the package's `LICENSE` file and metadata.
* **Splits:** the source has none. Made here: {n_train} `train` and {n_test} `test` images (rule below).
* **Images:** 28x28, mode `L`, stored as lossless PNG, so the pixel values are exactly the source arrays.

## Columns

| column | type | meaning |
|---|---|---|
| `image` | Image (L, 28x28) | the animal silhouette |
| `label` | ClassLabel | one of the 10 names below |

## Classes and counts

| id | label | train | test |
|---|---|---|---|
{rows}

## How it was made

The pickles were read with an unpickler that accepts NumPy arrays only, and their shapes were checked. The
source holds 10,000 images, 1,000 per class, of which {duplicates} are exact copies of an earlier image with
the same label. They were dropped, so no image is in both splits. Then, for each class in label
order, one `numpy.random.default_rng(seed)` generator permuted that class's distinct images: the first
`test_per_class` went to `test`, the rest to `train` (at most `max_per_class`). Rows keep the source order
within each split. Nothing was resized or altered.

Built with:

```
{INSTALL_COMMAND}
{argv}
```

## Loading

```python
from datasets import load_dataset
ds = load_dataset("path/to/animal_mnist")      # 'train' ({n_train}) and 'test' ({n_test})
```
"""


def build(output_dir: Path, overwrite: bool, test_per_class: int, max_per_class: int | None, seed: int) -> Path:
    """Write the dataset folder aside, then rename it into place."""
    output_dir = check_output_dir(output_dir, overwrite)
    images_path, labels_path, version = source_files()
    images, labels = load_source(images_path, labels_path)
    distinct = unique_rows(images, labels)
    duplicates = len(images) - len(distinct)
    train, test = split_rows(labels, distinct, test_per_class, max_per_class, seed)
    rows_of = {"train": train, "test": test}

    def fill(folder: Path) -> None:
        columns = {
            split: {"image": [png_bytes(images[i]) for i in rows], "label": labels[rows].tolist()}
            for split, rows in rows_of.items()
        }
        sizes, files = write_splits(folder, columns, _features())
        counts = {split: np.bincount(labels[rows], minlength=len(CLASS_NAMES)) for split, rows in rows_of.items()}
        options = f" --test_per_class {test_per_class}" if test_per_class != DEFAULT_TEST_PER_CLASS else ""
        options += f" --max_per_class {max_per_class}" if max_per_class is not None else ""
        options += f" --seed {seed}" if seed != 0 else ""
        command = f"python tools/build_animal_mnist.py --output_dir {output_dir.name}{options}"
        (folder / "README.md").write_text(card(version, duplicates, counts, sizes, files, command), encoding="utf-8")

    return write_dataset_folder(output_dir, overwrite, fill)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, required=True, help="folder to create (Hub dataset layout)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output_dir")
    parser.add_argument("--test_per_class", type=int, default=DEFAULT_TEST_PER_CLASS, help="test images per class")
    parser.add_argument("--max_per_class", type=int, default=None, help="cap on train images per class (for tests)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class split")
    args = parser.parse_args(argv)
    if args.test_per_class < 1 or (args.max_per_class is not None and args.max_per_class < 1):
        parser.error("--test_per_class and --max_per_class must be at least 1")
    return run_build(
        lambda: build(args.output_dir, args.overwrite, args.test_per_class, args.max_per_class, args.seed),
        (MissingSourcePackageError, SourceDataError),
    )


if __name__ == "__main__":
    sys.exit(main())
