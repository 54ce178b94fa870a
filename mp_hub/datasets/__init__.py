"""Small real datasets shipped inside the package (Hub layout), so the recipes run with no download.

`fashion_mnist_tiny`: 1,000 train and 1,000 test images of Fashion-MNIST (100 per class each); see its
README.md for licence and provenance, and `tools/build_fashion_mnist_tiny.py` (in the repository) for how it
was made.
"""

from __future__ import annotations

from pathlib import Path

DATASETS_DIR = Path(__file__).resolve().parent
FASHION_MNIST_TINY = DATASETS_DIR / "fashion_mnist_tiny"

__all__ = ["DATASETS_DIR", "FASHION_MNIST_TINY"]
