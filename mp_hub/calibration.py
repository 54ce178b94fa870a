"""Mean-mode calibration: BatchNorm statistics measured with the sites in "mean" mode.

Why: a network trained with φ's noise has BatchNorm running statistics of *noisy* activations. In "mean"
mode the noise is replaced by its expectation, so the activations after each site are less spread out and,
through the ReLUs, shifted (E[ReLU(a)] ≠ ReLU(E[a])); the BatchNorms then normalise with the wrong mean and
variance and the error compounds over the sites ("variance shift", Li et al., CVPR 2019). Measured on the
zoo benchmark's ResNet-20s, uncalibrated mean mode is 1–10 points below the 100-pass MC average.

The fix is one pass over training images with every site in "mean" mode (eval: running site statistics) and
every BatchNorm accumulating a plain average of its batch statistics. Those statistics are stored next to the
sites (`model.metaperturb_calibration`, saved in metaperturb.safetensors) and used *only* while a BatchNorm
is in eval mode and every site is in "mean" mode: training and "mc" evaluation keep the model's own statistics
(which are never modified: each BatchNorm reads the calibrated ones through its own `forward`).
If the model trains further, the calibration is stale (a BatchNorm's `num_batches_tracked` moved): it is then
not used, with a warning, until `calibrate_mean_mode` runs again.

LayerNorm models (a ViT) normalise each sample by itself, so there are no statistics to measure; their mean-field
error is fixed by the MC-matched fit alone (`mc_fit_steps` > 0, `mp_hub.calibration_fit`): each LayerNorm gets
a mean-mode weight and bias (`LayerNormAffine`), used under the same rule and stale once the LayerNorm's own
weight or bias changes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, InvalidInputError
from .evaluation import _unpack, sites_inference_mode
from .site import PerturbSite

logger = logging.getLogger(__name__)


def calibratable_norms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers with running statistics (the ones eval mode reads), by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.track_running_stats
        and module.running_mean is not None
    }


def fittable_layer_norms(model: nn.Module) -> dict[str, nn.LayerNorm]:
    """The plain `nn.LayerNorm`s with a weight, by module name: what the MC-matched fit can calibrate.
    Subclasses are left out (e.g. transformers' channels-first ConvNeXt LayerNorm has its own `forward`)."""
    return {
        name: module
        for name, module in model.named_modules()
        if type(module) is nn.LayerNorm and module.weight is not None
    }


def calibration_targets(model: nn.Module, *, layer_norms: bool) -> dict[str, nn.Module]:
    """The norm layers a calibration can hold, by name: every BatchNorm with running statistics and, with
    `layer_norms` (the MC-matched fit runs: `mc_fit_steps` > 0), every plain LayerNorm with a weight. Empty:
    nothing to calibrate."""
    return {**calibratable_norms(model), **(fittable_layer_norms(model) if layer_norms else {})}


def _key(name: str) -> str:
    return name.replace(".", "-")  # ModuleDict keys cannot hold dots


class NormStats(nn.Module):
    """Mean-mode statistics of one BatchNorm, and its `num_batches_tracked` when they were measured."""

    def __init__(self, num_features: int):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("source_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.register_buffer("num_images", torch.tensor(0, dtype=torch.long))

    def matches(self, norm: nn.modules.batchnorm._BatchNorm) -> bool:
        """The BatchNorm has not trained since: its `num_batches_tracked` did not move."""
        return int(norm.num_batches_tracked) == int(self.source_batches_tracked)

    @staticmethod
    def version_key(norm: nn.modules.batchnorm._BatchNorm) -> tuple:
        """Changes whenever what `matches` reads is modified in place (training steps, load_state_dict)."""
        tracked = norm.num_batches_tracked
        return (id(tracked), tracked._version)

    def normalize(self, norm: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
        norm._check_input_dim(x)
        return F.batch_norm(x, self.running_mean, self.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)


class LayerNormAffine(nn.Module):
    """Mean-mode weight and bias of one LayerNorm, and the LayerNorm's own weight and bias they were fitted from."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        weight = norm.weight.detach().clone()
        bias = self._own_bias(norm).detach().clone()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.register_buffer("source_weight", weight.clone())
        self.register_buffer("source_bias", bias.clone())
        self.register_buffer("num_images", torch.tensor(0, dtype=torch.long))

    @staticmethod
    def _own_bias(norm: nn.LayerNorm) -> Tensor:
        return norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)

    def matches(self, norm: nn.LayerNorm) -> bool:
        """The LayerNorm has not trained since: its weight and bias are the ones the fit started from."""
        return torch.equal(norm.weight, self.source_weight) and torch.equal(self._own_bias(norm), self.source_bias)

    @staticmethod
    def version_key(norm: nn.LayerNorm) -> tuple:
        """Changes whenever what `matches` reads is modified in place (optimizer steps, load_state_dict)."""
        return tuple((id(t), t._version) for t in (norm.weight, norm.bias) if t is not None)

    def normalize(self, norm: nn.LayerNorm, x: Tensor) -> Tensor:
        return F.layer_norm(x, norm.normalized_shape, self.weight, self.bias, norm.eps)


class MeanModeCalibration(nn.Module):
    """Per-norm-layer state for "mean" mode, read by each layer's `forward` while it applies: statistics for a
    BatchNorm (`NormStats`), a weight and bias for a LayerNorm (`LayerNormAffine`).

    Each layer gets a `CalibratedNormForward` as its instance `forward` (no hooks, no buffer swapping: the
    model's own buffers are never touched, so concurrent "mc" and "mean" callers are safe); `remove` restores
    the modules' class `forward`.
    """

    def __init__(self, norms: dict[str, nn.Module], sites: list[PerturbSite]):
        super().__init__()
        self.names = list(norms)
        self.stats = nn.ModuleDict(
            {
                _key(n): LayerNormAffine(m) if isinstance(m, nn.LayerNorm) else NormStats(m.num_features)
                for n, m in norms.items()
            }
        )
        self.__dict__["_norms"] = norms  # the model's own modules: not submodules of this one
        self.__dict__["_sites"] = sites
        self._warned_stale = False
        self.mc_fit: dict[str, Any] | None = None  # what `calibration_fit.fit_to_mc` did, if it ran

    @property
    def num_images(self) -> int:
        return int(next(iter(self.stats.values())).num_images) if self.names else 0

    @property
    def layer_norm_names(self) -> list[str]:
        return [n for n in self.names if isinstance(self.stats[_key(n)], LayerNormAffine)]

    def stale_norms(self) -> list[str]:
        """Norm layers that have trained since the calibration (see each entry's `matches`)."""
        return [n for n in self.names if not self.stats[_key(n)].matches(self._norms[n])]

    def active(self) -> bool:
        """Every site is in "mean" mode."""
        sites = self._sites
        return bool(sites) and all(s.inference_mode == "mean" for s in sites)

    def warn_stale(self) -> None:
        if not self._warned_stale:
            logger.warning(
                "the mean-mode calibration is stale (the model trained after it): mean mode uses the norm layers' "
                "own statistics and weights until mp_hub.calibrate_mean_mode(...) runs again"
            )
            self._warned_stale = True

    def install(self) -> None:
        for name, norm in self._norms.items():
            norm.forward = CalibratedNormForward(self, norm, self.stats[_key(name)])

    def remove(self) -> None:
        for norm in self._norms.values():
            if isinstance(norm.__dict__.get("forward"), CalibratedNormForward):
                del norm.__dict__["forward"]


class CalibratedNormForward:
    """A norm layer's `forward` while a calibration is installed: in eval with every site in "mean" mode, the
    eval-mode batch norm with the calibrated statistics (or the layer norm with the calibrated weight and bias);
    otherwise the module's own `forward`."""

    def __init__(self, calibration: MeanModeCalibration, norm: nn.Module, stats: nn.Module):
        self.calibration, self.norm, self.stats = calibration, norm, stats
        self._checked = None  # the stats' version_key when last found current: skips item() / equal() calls

    def _current(self) -> bool:
        key = self.stats.version_key(self.norm)
        if key == self._checked:
            return True
        if not self.stats.matches(self.norm):
            return False
        self._checked = key
        return True

    def __call__(self, x: Tensor) -> Tensor:
        norm = self.norm
        if norm.training or not self.calibration.active():
            return type(norm).forward(norm, x)
        if not self._current():
            self.calibration.warn_stale()
            return type(norm).forward(norm, x)
        return self.stats.normalize(norm, x)


def _pixel_values(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, dict) and "pixel_values" in batch:
        return batch["pixel_values"]
    return _unpack(batch)[0]


@torch.no_grad()
def measure_mean_mode_stats(
    model: nn.Module,
    norms: dict[str, nn.modules.batchnorm._BatchNorm],
    batches: Iterable[Any],
    max_images: int | None,
    keep: list[Tensor] | None = None,
) -> tuple[dict[str, tuple[Tensor, Tensor]], int]:
    """Average batch statistics of each BatchNorm over `batches`, sites in eval "mean" mode; model left as it was.
    `keep`: a list that receives the images used (on the model's device)."""
    saved = {
        n: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum)
        for n, m in norms.items()
    }
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    try:
        model.eval()
        for norm in norms.values():
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average of the batch statistics
            norm.train()
        with sites_inference_mode(model, "mean"):
            for batch in batches:
                pixel_values = _pixel_values(batch)
                if max_images is not None:
                    pixel_values = pixel_values[: max_images - seen]
                if pixel_values.shape[0] < 2:
                    if pixel_values.shape[0] == 1:
                        logger.info("calibration: a last batch of one image has no variance; skipped")
                    break
                pixel_values = pixel_values.to(device)
                if norms:  # (none: a LayerNorm model, which only needs the images kept for the fit)
                    model(pixel_values)  # positional: HF models and plain modules alike
                if keep is not None:
                    keep.append(pixel_values)
                seen += pixel_values.shape[0]
                if max_images is not None and seen >= max_images:
                    break
        measured = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in norms.items()}
    finally:
        for name, norm in norms.items():
            mean, var, tracked, momentum = saved[name]
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.num_batches_tracked.copy_(tracked)
            norm.momentum = momentum
        model.train(was_training)
    return measured, seen


def calibrate_mean_mode(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    max_images: int | None = None,
    mc_fit_steps: int = 0,
    mc_samples: int = 20,
    seed: int = 0,
) -> int:
    """Measure the BatchNorm statistics of "mean" mode on `batches` (training images, no augmentation needed)
    and store them with the sites, so that eval-mode "mean" passes use them. Returns the number of images used.

    `mc_fit_steps` > 0: then fit those statistics so that "mean" mode matches the MC-`mc_samples` average on the
    same images (`mp_hub.calibration_fit`; it keeps the images in memory and costs `mc_samples` passes over them
    plus `mc_fit_steps` forward/backward passes of 128 images; `seed` fixes its draws and batches). The fit
    also gives every plain `nn.LayerNorm` a mean-mode weight and bias: a LayerNorm model (a ViT) can only be
    calibrated this way.

    `batches` yields tensors, `(pixel_values, labels)` or dicts with `pixel_values` (a DataLoader works);
    `max_images` caps how many are used. The model's own statistics, its mode and the sites' state are left
    unchanged. Calibrating again replaces the previous calibration. In a multi-process run, give every
    process the same images (the result is then identical everywhere).
    """
    from .attach import handle_of

    handle = handle_of(model)
    model = handle.model  # the bare model, also when a DDP / compile wrapper was passed
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 2):
        raise ConfigError(f"max_images must be an int >= 2 (or None for all), got {max_images!r}")
    for name, value, low in (("mc_fit_steps", mc_fit_steps, 0), ("mc_samples", mc_samples, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    targets = calibration_targets(model, layer_norms=mc_fit_steps > 0)
    if not targets:
        if fittable_layer_norms(model):
            raise ConfigError(
                f"{type(model).__name__} has no BatchNorm with running statistics, only LayerNorms (which normalise "
                "each sample by itself): its mean mode is calibrated by the MC-matched fit alone; pass mc_fit_steps > 0"
            )
        raise ConfigError(
            f"{type(model).__name__} has no BatchNorm with running statistics and no nn.LayerNorm with a weight: "
            "its mean mode has nothing to calibrate"
        )
    norms = {n: m for n, m in targets.items() if not isinstance(m, nn.LayerNorm)}  # what moment matching measures
    kept: list[Tensor] | None = [] if mc_fit_steps else None
    measured, seen = measure_mean_mode_stats(model, norms, batches, max_images, keep=kept)
    if seen < 2:
        raise InvalidInputError("calibrate_mean_mode got no batch of at least 2 images")
    calibration = MeanModeCalibration(targets, handle.site_list())
    for name, (mean, var) in measured.items():  # (a LayerNormAffine is made from its layer's weight, in place)
        stats = calibration.stats[_key(name)].to(device=mean.device, dtype=mean.dtype)
        stats.running_mean.copy_(mean)
        stats.running_var.copy_(var)
        stats.source_batches_tracked.fill_(int(norms[name].num_batches_tracked))
    for stats in calibration.stats.values():
        stats.num_images.fill_(seen)
    if mc_fit_steps:  # before installing: if it fails, the model keeps the calibration it had
        from .calibration_fit import fit_to_mc

        if len({tuple(x.shape[1:]) for x in kept}) > 1:
            raise InvalidInputError("mc_fit_steps needs calibration images of one shape (they are batched anew)")

        calibration.mc_fit = fit_to_mc(
            model, calibration, torch.cat(kept), steps=mc_fit_steps, mc_samples=mc_samples, seed=seed
        )
    handle._set_calibration(calibration)
    logger.info(
        "calibrated mean mode: %d BatchNorm and %d LayerNorm layers on %d images",
        len(norms),
        len(targets) - len(norms),
        seen,
    )
    return seen
