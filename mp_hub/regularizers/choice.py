"""One regularizer for a model, by name: `none`, `dropblock` (at φ's sites) or `metaperturb` (a frozen φ), and how
it changes with the training step (κ warm-up, DropBlock ramp)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attach import AttachedPerturbation, attach
from ..errors import ConfigError
from ..mean_mode import calibration_targets
from ..perturb import MetaPerturb
from ..schedules import linear_noise_coeff
from .dropblock import DropBlock2d, linear_drop_prob, set_drop_prob
from .placement import RegularizerPlacement, attach_regularizer

logger = logging.getLogger(__name__)

REGULARIZERS = ("metaperturb", "none", "dropblock")


@dataclass
class Regularization:
    """The chosen regularizer on the model, and its schedule over the steps."""

    kind: str
    handle: AttachedPerturbation | None = None  # ("metaperturb")
    placement: RegularizerPlacement | None = None  # ("dropblock")
    phi_id: str | None = None
    noise_anneal_fraction: float = 0.4
    dropblock_prob: float = 0.1
    info: dict = field(default_factory=dict)

    def set_step(self, step: int, total_steps: int) -> dict[str, float]:
        """Set κ (φ's noise) or the DropBlock rate for `step` of `total_steps`; returns what was set."""
        if self.kind == "metaperturb":
            kappa = linear_noise_coeff(step, total_steps, self.noise_anneal_fraction)
            self.handle.set_noise_coeff(kappa)
            return {"noise_coeff": kappa}
        if self.kind == "dropblock":
            # Ghiasi et al.: the drop rate grows linearly from 0 to its final value over the whole of training.
            prob = linear_drop_prob(step, total_steps, self.dropblock_prob)
            set_drop_prob(self.placement.model, prob)
            return {"drop_prob": prob}
        return {}

    def finish(self) -> None:
        """After training: the full φ (κ = 1); DropBlock is the identity in eval mode anyway."""
        if self.handle is not None:
            self.handle.set_noise_coeff(1.0)

    def calibrate_mean_mode(
        self,
        batches: Iterable[torch.Tensor],
        *,
        max_images: int,
        seed: int,
        mc_fit_steps: int = 0,
        progress: bool = False,
    ) -> int | None:
        """Mean-mode BatchNorm statistics from `batches` of normalised images (`mp_hub.mean_mode`), after `finish`;
        with `mc_fit_steps`, fitted to the MC average (LayerNorm weights too).

        None when there is nothing to do: no φ, `max_images` 0, or a model without BatchNorm (e.g. a ViT) and
        no fit. `batches` is only read when there is something to calibrate.
        """
        if self.handle is None or max_images == 0:
            return None
        model = self.handle.model
        if not calibration_targets(model, layer_norms=mc_fit_steps > 0):
            logger.info(
                "mean-mode calibration: %s has no BatchNorm (LayerNorms are calibrated only by the MC fit), "
                "nothing to do",
                type(model).__name__,
            )
            return None
        return self.handle.calibrate_mean_mode(
            batches, max_images=max_images, mc_fit_steps=mc_fit_steps, seed=seed, progress=progress
        )

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        # By identity: φ is excluded even if someone unfroze it.
        params = self.handle.model_parameters() if self.handle is not None else list(model.parameters())
        return [p for p in params if p.requires_grad]


def apply_regularizer(
    model: nn.Module,
    kind: str,
    *,
    phi: MetaPerturb | None = None,
    phi_id: str | None = None,
    image_size: int | None = None,
    targets: str | Sequence[str] | None = None,
    noise_anneal_fraction: float = 0.4,
    dropblock_prob: float = 0.1,
    dropblock_size: int = 7,
) -> Regularization:
    """Put regularizer `kind` on `model`: nothing, DropBlock(`dropblock_size`) at φ's sites (rate ramped 0 →
    `dropblock_prob`), or the frozen `phi` attached with `image_size` as its spatial norm (κ 0 → 1 over the first
    `noise_anneal_fraction` of the steps). `targets`: a regex of module names for models without a resolver."""
    if kind not in REGULARIZERS:
        raise ConfigError(f"regularizer {kind!r} is not one of {REGULARIZERS}")
    if not 0.0 <= noise_anneal_fraction <= 1.0:
        raise ConfigError(f"noise_anneal_fraction must be in [0, 1], got {noise_anneal_fraction}")
    if kind == "none":
        return Regularization("none")
    if kind == "dropblock":
        if not 0.0 <= dropblock_prob < 1.0:
            raise ConfigError(f"dropblock_prob must be in [0, 1), got {dropblock_prob}")
        placement = attach_regularizer(model, lambda spec: DropBlock2d(0.0, dropblock_size), targets=targets)
        info = {"dropblock_prob": dropblock_prob, "dropblock_size": dropblock_size, "sites": len(placement)}
        return Regularization("dropblock", placement=placement, dropblock_prob=dropblock_prob, info=info)
    if phi is None:
        raise ConfigError("regularizer 'metaperturb' needs a φ (phi=MetaPerturb.from_pretrained(...))")
    handle = attach(model, phi, targets=targets, spatial_norm=image_size, inference_mode="mc")
    return Regularization(
        "metaperturb",
        handle=handle,
        phi_id=phi_id,
        noise_anneal_fraction=noise_anneal_fraction,
        info={"sites": len(handle.sites)},
    )
