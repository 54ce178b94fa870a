"""tools/build_fashion_mnist_tiny.py rebuilds the shipped Fashion-MNIST tiny byte for byte (needs ../shared)."""

import hashlib
from pathlib import Path

import pytest
from _builders import load_script

from mp_hub.datasets import FASHION_MNIST_TINY

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "build_fashion_mnist_tiny.py"


@pytest.fixture(scope="module")
def tool():
    # tools/ is not a package: load the script by path
    return load_script(SCRIPT, "build_fashion_mnist_tiny")


def test_default_output_is_the_shipped_folder(tool):
    assert tool.DEFAULT_OUT == FASHION_MNIST_TINY


def test_fashion_mnist_tiny_rebuilds_identically(tmp_path, data_dir, tool):
    tool.build(data_dir / "fashion_mnist", tmp_path)
    for rel in ("README.md", "data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"):
        digest = [hashlib.sha256(Path(root, rel).read_bytes()).hexdigest() for root in (tmp_path, FASHION_MNIST_TINY)]
        assert digest[0] == digest[1], rel
