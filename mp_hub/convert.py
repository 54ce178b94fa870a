"""Conversion of the authors' released φ (`perturb_750.pth`, JWoong148/MetaPerturb) to mp_hub's format.

`MetaPerturb.from_official` builds φ from what this module reads.

The only place in mp_hub that reads a pickle, and it does so with `weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import CheckpointError

OFFICIAL_KEY_MAP = {
    "phi_1.w_identity": "noise_generator.layer1.identity_kernel",
    "phi_1.w_all": "noise_generator.layer1.mean_kernel",
    "phi_2.w_identity": "noise_generator.layer2.identity_kernel",
    "phi_2.w_all": "noise_generator.layer2.mean_kernel",
    "kernel": "channel_scale.kernels",
    "fc.weight": "channel_scale.fc.weight",
}

OFFICIAL_PROVENANCE = {
    "source": "JWoong148/MetaPerturb@c08314a checkpoints/src/tiny_imagenet_resnet20_final/perturb_750.pth",
    "source_repository": "https://github.com/JWoong148/MetaPerturb",
    "source_commit": "c08314a",
    "source_dataset": "Tiny ImageNet",
    "task_split": "10 tasks ('halves': class groups, each group's images split in two, train/valid swapped)",
    "source_architecture": "ResNet-20 (CIFAR-style)",
    "steps": 750,
    "license": "other",
    "license_note": "The authors' repository states no licence: the converted weights must not be redistributed "
    "without the authors' permission.",
    "converted_by": "mp-hub convert-official",
}


def load_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load surfaces a damaged file as any of many exception types (UnpicklingError, struct.error, ...)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable weights-only torch checkpoint: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, expected a dict of tensors")
    return state


def convert_official_state(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Rename the authors' keys, checking names, the shapes of `reference` (a MetaPerturb's state dict) and the
    82 values."""
    missing = sorted(set(OFFICIAL_KEY_MAP) - set(state))
    unexpected = sorted(set(state) - set(OFFICIAL_KEY_MAP))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} is not the authors' Perturb state: missing keys {missing}, unexpected keys {unexpected}"
        )
    converted = {}
    for official, ours in OFFICIAL_KEY_MAP.items():
        tensor = state[official]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != reference[ours].shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"{source}: '{official}' should have shape {tuple(reference[ours].shape)}, got {got}")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{source}: '{official}' has non-finite values")
        converted[ours] = tensor.detach().to("cpu", torch.float32).contiguous()
    total = sum(t.numel() for t in converted.values())
    if total != 82:
        raise CheckpointError(f"{source}: expected 82 values in all, got {total}")
    return converted
