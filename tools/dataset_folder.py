"""Writing a Hugging Face Hub dataset folder, shared by the dataset builders in tools/.

A builder hands `write_dataset_folder` a function that fills a fresh folder (`data/<split>-00000-of-00001.parquet`
files, then the README.md card); the folder is written beside the output and renamed into place, so a killed
build leaves the output as it was. `write_splits` writes the splits' Parquet files, `split_metadata` the card's
YAML that `datasets.load_dataset` reads back.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")


class OutputDirError(FileExistsError):
    """The output folder already holds files and --overwrite was not given."""


def png_bytes(image: np.ndarray) -> bytes:
    """A grayscale uint8 array as lossless PNG bytes (a Parquet image cell keeps its pixels exactly)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_splits(folder: Path, columns: dict[str, dict[str, list]], features) -> tuple[dict[str, int], dict[str, int]]:
    """Each split's Parquet file in `folder`/data from its columns (`image`: PNG bytes); returns the splits' Arrow
    sizes and file sizes in bytes (the card's `num_bytes` and `download_size`)."""
    from datasets import Dataset

    sizes, files = {}, {}
    for split in SPLITS:
        path = folder / "data" / f"{split}-00000-of-00001.parquet"
        rows = {**columns[split], "image": [{"bytes": image, "path": None} for image in columns[split]["image"]]}
        dataset = Dataset.from_dict(rows, features=features)
        dataset.to_parquet(str(path))
        sizes[split], files[split] = int(dataset.data.nbytes), path.stat().st_size
    return sizes, files


def split_metadata(sizes: dict[str, int], examples: dict[str, int], files: dict[str, int]) -> tuple[dict, list]:
    """The card's `dataset_info` splits and sizes, and its `configs`, for the splits train and test."""
    return {
        "splits": [{"name": split, "num_bytes": sizes[split], "num_examples": examples[split]} for split in SPLITS],
        "download_size": sum(files.values()),
        "dataset_size": sum(sizes.values()),
    }, [{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in SPLITS]}]


def check_output_dir(output_dir: Path, overwrite: bool) -> Path:
    """`output_dir` resolved; an `OutputDirError` where it holds files and `overwrite` is false (call it before
    reading the sources, so that a refused build costs nothing)."""
    output_dir = output_dir.resolve()
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise OutputDirError(f"{output_dir} exists and is not empty; pass --overwrite to replace it")
    return output_dir


def write_dataset_folder(output_dir: Path, overwrite: bool, fill: Callable[[Path], None]) -> Path:
    """Check the output again, let `fill` write a fresh folder beside it, then rename that into place."""
    output_dir = check_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it owner-only; the renamed folder should read like any other
    try:
        (tmp / "data").mkdir()
        fill(tmp)
        if output_dir.exists():  # only reached when empty or --overwrite: move it aside so the rename cannot fail
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old / "previous")
            shutil.rmtree(old)
        os.replace(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output_dir


def run_build(build: Callable[[], Path], errors: tuple[type[Exception], ...]) -> int:
    """A builder's exit status: 0 and the folder printed, or 2 and one line naming the error (of `errors`, or an
    `OutputDirError`)."""
    try:
        out = build()
    except (*errors, OutputDirError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    print(out)
    return 0
