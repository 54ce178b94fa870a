"""Named φ checkpoints. Bundled ones load offline: `MetaPerturb.from_pretrained("<name>")`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError

BUNDLED_DIR = Path(__file__).parent / "bundled"
# The φ that recipes/transfer.py uses when no --perturb_model_id is given (bundled once meta-trained).
DEFAULT_PHI = "metaperturb-glyphs10-resnet20"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    hub_id: str | None
    source_dataset: str
    architecture: str
    steps: int
    license: str
    bundled: str | None = None  # folder name under mp_hub/zoo/bundled
    how_to_get: str = ""
    results: dict[str, str] = field(default_factory=dict)

    @property
    def bundled_path(self) -> Path | None:
        return BUNDLED_DIR / self.bundled if self.bundled else None


_REGISTRY: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    _REGISTRY[entry.name] = entry
    return entry


def entries() -> list[ZooEntry]:
    return list(_REGISTRY.values())


def get(name: str) -> ZooEntry | None:
    return _REGISTRY.get(name)


def bundled_path(name: str) -> Path | None:
    """The bundled folder of zoo entry `name`, or None when `name` is not a bundled zoo entry."""
    entry = _REGISTRY.get(name)
    if entry is None or entry.bundled_path is None:
        return None
    return entry.bundled_path if entry.bundled_path.is_dir() else None


def resolve(name: str) -> str | Path | None:
    """Where zoo entry `name` loads from (its bundled folder, else its Hub id); None if `name` is no zoo entry."""
    entry = _REGISTRY.get(name)
    if entry is None:
        return None
    source = bundled_path(name) or entry.hub_id
    if source is None:
        raise CheckpointError(f"zoo entry '{name}' is not bundled and has no Hub id; to get it: {entry.how_to_get}")
    return source


register(
    ZooEntry(
        name="metaperturb-official-tinyimagenet",
        hub_id=None,
        source_dataset="Tiny ImageNet (10 tasks, 'halves' split)",
        architecture="ResNet-20 (CIFAR)",
        steps=750,
        license="none stated by the authors: not redistributable",
        how_to_get=(
            "download checkpoints/src/tiny_imagenet_resnet20_final/perturb_750.pth from the authors' repository "
            "JWoong148/MetaPerturb, then `mp-hub convert-official perturb_750.pth ./metaperturb-official`"
        ),
        results={  # benchmarks/transfer_gain.py, ResNet-20 from scratch, 100 images/class, mean of 3 seeds (README)
            "fashion_mnist, 1,000 steps": "acc 83.1 % (none 83.0), ECE 1.6 % (none 8.9), NLL 0.482 (none 0.630)",
            "200 steps": "acc fashion_mnist 73.6 % (none 76.6), mnist 96.0 % (none 97.2)",
        },
    )
)

register(
    ZooEntry(
        name=DEFAULT_PHI,
        hub_id=None,
        source_dataset="glyphs10 (10 class-disjoint font-script tasks, ../shared/data/glyphs10)",
        architecture="CIFAR ResNet-20, 32 px",
        steps=150,
        license="apache-2.0",
        bundled=DEFAULT_PHI,
        how_to_get=(
            "it ships inside mp_hub (reinstall mp_hub if mp_hub/zoo/bundled/ is missing); to make one yourself, "
            "meta-train with recipes/meta_train.py as benchmarks/reproduce_zoo.sh does"
        ),
        results={  # benchmarks/transfer_gain.py, ResNet-20 from scratch, 100 images/class, mean of 3 seeds (README)
            "fashion_mnist, 1,000 steps": "acc 82.4 % (none 83.0), ECE 3.2 % (none 8.9), NLL 0.505 (none 0.630)",
            "200 steps": "acc fashion_mnist 72.4 % (none 76.6), mnist 94.7 % (none 97.2)",
        },
    )
)
