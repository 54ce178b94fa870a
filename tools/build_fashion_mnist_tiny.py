"""Build `mp_hub/datasets/fashion_mnist_tiny/` (shipped in the package) from the full Fashion-MNIST in Hub layout.

    python tools/build_fashion_mnist_tiny.py [--source ../shared/data/fashion_mnist] [--out DIR]

Per split, 100 images per class are drawn without replacement with `samples_per_class_subset` (a
`torch.Generator` seeded with 0, one `randperm` per class in class order) and kept in their original row
order. Rows are copied byte for byte with pyarrow (the PNG bytes are not re-encoded), and the schema's
`huggingface` metadata is kept, so `datasets.load_dataset(out)` sees the same Image and ClassLabel features.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq
import torch

from mp_hub.data.loading import samples_per_class_subset

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared" / "data" / "fashion_mnist"
DEFAULT_OUT = ROOT / "mp_hub" / "datasets" / "fashion_mnist_tiny"
SPLITS = ("train", "test")
PER_CLASS = 100
SEED = 0

CARD = """---
license: mit
pretty_name: Fashion-MNIST tiny (100 images per class)
task_categories:
- image-classification
size_categories:
- 1K<n<10K
source_datasets:
- fashion_mnist
tags:
- fashion
- mnist-like
- mp_hub
dataset_info:
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
{names}
  splits:
{splits}
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
---

# Fashion-MNIST tiny

A small, class-balanced subset of [Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist) shipped
inside `mp_hub` so that `recipes/transfer.py` runs offline with no flags: {per_class} train and {per_class} test
images per class ({n_train:,} train, {n_test:,} test), 28x28 grayscale, 10 clothing classes.

* **Creators:** Han Xiao, Kashif Rasul and Roland Vollgraf (Zalando Research). "Fashion-MNIST: a Novel Image
  Dataset for Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017.
  <https://github.com/zalandoresearch/fashion-mnist>
* **Licence:** MIT, copyright 2017 Zalando SE.

## How it was made

`python tools/build_fashion_mnist_tiny.py` reads the full dataset (the official 60,000 / 10,000
split, written unchanged from Debian's `dataset-fashion-mnist` package) and, for each split separately, draws
{per_class} row indices per class with `mp_hub.data.samples_per_class_subset(labels, {per_class}, seed={seed})`
(a `torch.Generator` seeded with {seed}, one `randperm` per class in class order). The chosen rows keep their
original order and are copied byte for byte: the images are the original lossless PNGs, nothing is resized.

## Classes

| id | label | train | test |
|---|---|---|---|
{class_rows}

## Loading

```python
from datasets import load_dataset
from mp_hub.datasets import FASHION_MNIST_TINY

ds = load_dataset(str(FASHION_MNIST_TINY))  # 'train' (1000) and 'test' (1000)
```
"""


def build(source: Path, out: Path, per_class: int = PER_CLASS, seed: int = SEED) -> dict[str, int]:
    (out / "data").mkdir(parents=True, exist_ok=True)
    counts, nbytes, names, per_class_counts = {}, {}, None, {}
    for split in SPLITS:
        table = pq.read_table(source / "data" / f"{split}-00000-of-00001.parquet")
        meta = json.loads(table.schema.metadata[b"huggingface"])
        names = meta["info"]["features"]["label"]["names"]
        labels = torch.from_numpy(table.column("label").to_numpy().copy())
        index = samples_per_class_subset(labels, per_class, seed)
        subset = table.take(index.numpy())  # keeps the schema and its huggingface metadata
        pq.write_table(subset, out / "data" / f"{split}-00000-of-00001.parquet", compression="zstd")
        counts[split] = subset.num_rows
        nbytes[split] = subset.nbytes
        per_class_counts[split] = torch.bincount(labels[index], minlength=len(names)).tolist()
    card = CARD.format(
        names="\n".join(f"          '{i}': {name}" for i, name in enumerate(names)),
        splits="\n".join(f"  - name: {s}\n    num_bytes: {nbytes[s]}\n    num_examples: {counts[s]}" for s in SPLITS),
        per_class=per_class,
        seed=seed,
        n_train=counts["train"],
        n_test=counts["test"],
        class_rows="\n".join(
            f"| {i} | `{name}` | {per_class_counts['train'][i]} | {per_class_counts['test'][i]} |"
            for i, name in enumerate(names)
        ),
    )
    (out / "README.md").write_text(card)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    counts = build(args.source, args.out)
    print(f"wrote {args.out}: {counts}")


if __name__ == "__main__":
    main()
