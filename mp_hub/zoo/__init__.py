"""Named φ checkpoints. Bundled ones load offline: `MetaPerturb.from_pretrained("<name>")`.

No figure is written here: a bundled φ's meta-training and benchmark results are in its own config.json and card
(`bundled_provenance`; `tools/bundle_zoo.py` writes them from the benchmark records), and an entry that ships no
folder says where its figures are (`results_at`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import CONFIG_NAME, MetaPerturbConfig
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
    license: str
    steps: int | None = None  # meta-training steps of an entry that ships no folder (a bundled φ records its own)
    bundled: str | None = None  # folder name under mp_hub/zoo/bundled
    how_to_get: str = ""
    results_at: str = ""  # where the benchmark figures of an entry that ships no folder are

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


def bundled_provenance(name: str) -> dict[str, Any] | None:
    """The provenance in bundled entry `name`'s config.json (meta-training settings, selection, and the benchmark
    rows of its card as `results`); None when `name` is not a bundled zoo entry."""
    folder = bundled_path(name)
    return None if folder is None else MetaPerturbConfig.from_json_file(folder / CONFIG_NAME).provenance


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
        results_at=(
            "the `metaperturb:official` rows of benchmarks/transfer_gain.py's records in benchmarks/results/ "
            "(tabled in docs/results.md)"
        ),
    )
)

register(
    ZooEntry(
        name=DEFAULT_PHI,
        hub_id=None,
        source_dataset="glyphs10 (10 class-disjoint font-script tasks, ../shared/data/glyphs10)",
        architecture="CIFAR ResNet-20, 32 px",
        license="apache-2.0",
        bundled=DEFAULT_PHI,
        how_to_get=(
            "it ships inside mp_hub (reinstall mp_hub if mp_hub/zoo/bundled/ is missing); to make one yourself, "
            "meta-train with recipes/meta_train.py as benchmarks/reproduce_zoo.sh does"
        ),
    )
)
