"""The norm layers a mean-mode calibration can hold, and the key each has in it."""

from __future__ import annotations

from torch import nn

from ..model_edits import module_key


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


norm_key = module_key  # a norm layer's key in a calibration's ModuleDict
