"""What a mean-mode calibration holds per norm layer, and the `forward` through which each layer reads it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model_edits import replace_forward
from ..site import PerturbSite
from .norms import norm_key

logger = logging.getLogger(__name__)


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

    `install` gives each layer a `CalibratedNormForward` as a `model_edits` replacement (no buffer swapping:
    the model's own buffers are never touched, so concurrent "mc" and "mean" callers are safe); `remove` undoes
    it.
    """

    def __init__(self, norms: dict[str, nn.Module], sites: Sequence[PerturbSite]):
        super().__init__()
        self.names = list(norms)
        self.stats = nn.ModuleDict(
            {
                norm_key(n): LayerNormAffine(m) if isinstance(m, nn.LayerNorm) else NormStats(m.num_features)
                for n, m in norms.items()
            }
        )
        self.__dict__["_norms"] = norms  # the model's own modules: not submodules of this one
        self.__dict__["_sites"] = list(sites)
        self._warned_stale = False
        self.__dict__["_edits"] = []  # model_edits handles while installed
        self.mc_fit: dict[str, Any] | None = None  # what `mc_fit.fit_to_mc` did, if it ran

    @property
    def norms(self) -> dict[str, nn.Module]:
        """The model's norm layers this calibration is for, by module name."""
        return self._norms

    @property
    def num_images(self) -> int:
        return int(next(iter(self.stats.values())).num_images) if self.names else 0

    @property
    def layer_norm_names(self) -> list[str]:
        return [n for n in self.names if isinstance(self.stats[norm_key(n)], LayerNormAffine)]

    def stale_norms(self) -> list[str]:
        """Norm layers that have trained since the calibration (see each entry's `matches`)."""
        return [n for n in self.names if not self.stats[norm_key(n)].matches(self._norms[n])]

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
        self.remove()
        self._edits.extend(
            replace_forward(norm, CalibratedNormForward(self, norm, self.stats[norm_key(name)]))
            for name, norm in self._norms.items()
        )

    def remove(self) -> None:
        for edit in self._edits:
            edit.remove()
        self._edits.clear()


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

    def __call__(self, own_forward: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        norm = self.norm
        if norm.training or not self.calibration.active():
            return own_forward(x)
        if not self._current():
            self.calibration.warn_stale()
            return own_forward(x)
        return self.stats.normalize(norm, x)
