"""Test configuration: everything runs offline. These variables must be set before any HF import."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests use tiny tensors: one thread is as fast and avoids oversubscribing a 2-core machine when
# a test launches worker processes of its own (with 2 intra-op threads on a busy machine, OpenMP spin-waits make
# each conv ~100× slower). It is also the thread count of those workers (OMP_NUM_THREADS=1), which in-process runs
# compared with them must share: CPU kernels round differently with another thread count.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REFERENCE_DIR = SHARED / "reference"
DATA_DIR = SHARED / "data"


def require_shared(path: Path) -> Path:
    """Skip (with the reason) where ../shared is absent, e.g. on a user's clone."""
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the project's ../shared folder")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return require_shared(REFERENCE_DIR)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return require_shared(DATA_DIR)
